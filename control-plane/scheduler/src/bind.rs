//! Binding: `POST pods/<name>/binding` with a core/v1 Binding, the one
//! write that assigns a pod to a node (the API server sets
//! `spec.nodeName` once, and refuses a second assignment).
use k8s_openapi::{
    api::core::v1::{Binding, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::PostParams};

/// The Binding of `pod` to `node` (the pod's UID guards against binding a
/// namesake created after the decision).
pub fn binding(pod: &Pod, node: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    }
}

pub async fn bind(pods: &Api<Pod>, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(&binding(pod, node)).map_err(kube::Error::SerdeError)?;
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pods.create_subresource::<serde_json::Value>("binding", name, &PostParams::default(), body)
        .await?;
    Ok(())
}

/// The API said the pod cannot be bound any more (gone, already bound, or
/// being deleted): retrying is pointless.
pub fn is_final(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PodBuilder;

    #[test]
    fn the_binding_targets_the_node_and_names_the_pod() {
        let pod = PodBuilder::new("web").namespace("shop").build();
        let b = serde_json::to_value(binding(&pod, "n1")).unwrap();
        assert_eq!(b["metadata"]["name"], "web");
        assert_eq!(b["metadata"]["namespace"], "shop");
        assert_eq!(b["metadata"]["uid"], "uid-web");
        assert_eq!(b["target"]["kind"], "Node");
        assert_eq!(b["target"]["name"], "n1");
    }
}
