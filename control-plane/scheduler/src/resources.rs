//! What a Pod asks for and what a Node offers, in the units the fit check
//! compares (millicores, bytes, pod slots, extended resources as counts).
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Node, Pod},
    apimachinery::pkg::api::resource::Quantity,
};

use crate::quantity::{parse_milli, parse_value};

/// Upstream's `DefaultMilliCPURequest`: what a container without a cpu
/// request counts as when spreading load (never for the fit check).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Upstream's `DefaultMemoryRequest` (200 MiB), likewise.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A set of amounts; `pods` is only meaningful for a node's allocatable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), hugepages: whole counts.
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    /// Reads a ResourceList (`requests`, `allocatable`, `overhead`).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut r = Self::default();
        for (name, q) in list.into_iter().flatten() {
            r.add_named(name, &q.0);
        }
        r
    }

    fn add_named(&mut self, name: &str, q: &str) {
        match name {
            "cpu" => self.milli_cpu += parse_milli(q).unwrap_or(0),
            "memory" => self.memory += parse_value(q).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage += parse_value(q).unwrap_or(0),
            "pods" => self.pods += parse_value(q).unwrap_or(0),
            other if is_scalar(other) => {
                *self.scalar.entry(other.to_string()).or_default() += parse_value(q).unwrap_or(0)
            }
            _ => {}
        }
    }

    pub fn add(&mut self, o: &Resource) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resource) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Element-wise maximum (an init container runs alone, so the pod
    /// needs the larger of it and the regular containers together).
    fn max_with(&mut self, o: &Resource) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// Upstream's `IsScalarResourceName`: extended (domain-qualified, outside
/// kubernetes.io), hugepages and attachable volumes.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.contains("kubernetes.io/"))
}

/// A node's `status.allocatable`.
pub fn allocatable(node: &Node) -> Resource {
    Resource::from_list(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

/// Upstream's `PodRequests`: the sum of the containers, sidecars
/// (restartable init containers) added alongside, the larger of that and
/// each ordinary init container (plus the sidecars started before it), then
/// the overhead. With `non_zero`, a container's missing cpu/memory request
/// counts as the defaults above (for scoring only).
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resource {
    let Some(spec) = pod.spec.as_ref() else {
        return Resource::default();
    };
    let container = |c: &Container| {
        let reqs = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let mut r = Resource::from_list(reqs);
        if non_zero {
            if !reqs.is_some_and(|m| m.contains_key("cpu")) {
                r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
            }
            if !reqs.is_some_and(|m| m.contains_key("memory")) {
                r.memory = DEFAULT_MEMORY_REQUEST;
            }
        }
        r
    };
    let mut total = Resource::default();
    for c in &spec.containers {
        total.add(&container(c));
    }
    let mut sidecars = Resource::default();
    let mut init_max = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let mut r = container(c);
        if c.restart_policy.as_deref() == Some("Always") {
            total.add(&r);
            sidecars.add(&r);
            r = sidecars.clone();
        } else {
            r.add(&sidecars);
        }
        init_max.max_with(&r);
    }
    total.max_with(&init_max);
    if let Some(o) = spec.overhead.as_ref() {
        total.add(&Resource::from_list(Some(o)));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{PodBuilder, container};

    #[test]
    fn requests_sum_containers_and_take_the_larger_init_container() {
        let pod = PodBuilder::new("p")
            .container(container("500m", "1Gi"))
            .container(container("250m", "1Gi"))
            .init_container(container("1", "512Mi"))
            .build();
        let r = pod_requests(&pod, false);
        assert_eq!(r.milli_cpu, 1000, "init container 1 > 750m");
        assert_eq!(r.memory, 2 << 30, "containers 2Gi > init 512Mi");
    }

    #[test]
    fn overhead_is_added_on_top() {
        let pod = PodBuilder::new("p")
            .container(container("500m", "1Gi"))
            .overhead("100m", "64Mi")
            .build();
        let r = pod_requests(&pod, false);
        assert_eq!((r.milli_cpu, r.memory), (600, (1 << 30) + (64 << 20)));
    }

    #[test]
    fn sidecars_run_alongside_the_containers_and_later_init_containers() {
        let mut sidecar = container("200m", "0");
        sidecar.restart_policy = Some("Always".into());
        let pod = PodBuilder::new("p")
            .container(container("500m", "0"))
            .init_container(sidecar)
            .init_container(container("600m", "0"))
            .build();
        // containers + sidecar = 700m; the later init container runs with
        // the sidecar: 800m.
        assert_eq!(pod_requests(&pod, false).milli_cpu, 800);
    }

    #[test]
    fn non_zero_requests_default_missing_cpu_and_memory() {
        let pod = PodBuilder::new("p").container(Container::default()).build();
        assert!(pod_requests(&pod, false).is_zero());
        let r = pod_requests(&pod, true);
        assert_eq!(
            (r.milli_cpu, r.memory),
            (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST)
        );
    }

    #[test]
    fn extended_resources_are_counted_by_name() {
        let mut c = container("0", "0");
        c.resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert("example.com/gpu".into(), Quantity("2".into()));
        let r = pod_requests(&PodBuilder::new("p").container(c).build(), false);
        assert_eq!(r.scalar.get("example.com/gpu"), Some(&2));
    }
}
