//! Controller references: who controls an object, and upstream's
//! `ClaimObject` rule for adopting orphans that match a selector and
//! releasing owned objects that no longer do. The patches are upstream's
//! own (strategic merge on `ownerReferences`, keyed by uid, with the
//! object's uid so a recreated namesake is never touched).
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Value, json};

use super::selector::Selector;

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The reference a controller puts on what it creates or adopts:
/// `controller: true` so no other controller claims it, and
/// `blockOwnerDeletion: true` so foreground deletion of the owner waits
/// for it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// What a controller does with one candidate object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by us and still selected.
    Owned,
    /// An orphan we select: take it.
    Adopt,
    /// Controlled by us but no longer selected: let go.
    Release,
    /// Someone else's, or not for us to touch.
    Ignore,
}

/// The claiming controller, as far as claiming is concerned.
pub struct Claimant<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    /// Being deleted: adopts nothing and releases nothing.
    pub deleting: bool,
    pub selector: &'a Selector,
}

/// Upstream's `BaseControllerRefManager.ClaimObject`.
pub fn claim(c: &Claimant, obj: &ObjectMeta) -> Claim {
    let selected = c.selector.matches(obj.labels.as_ref());
    match controller_of(obj) {
        Some(r) if r.uid != c.uid => Claim::Ignore,
        Some(_) if selected => Claim::Owned,
        Some(_) if c.deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if c.deleting || !selected || obj.deletion_timestamp.is_some() => Claim::Ignore,
        None if obj.namespace.as_deref().unwrap_or("") != c.namespace => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// Strategic merge patch adding `owner` to an orphan's ownerReferences.
pub fn adopt_patch(owner: &OwnerReference, obj_uid: &str) -> Value {
    json!({"metadata": {"ownerReferences": [owner], "uid": obj_uid}})
}

/// Strategic merge patch removing the reference to `owner_uid`.
pub fn release_patch(owner_uid: &str, obj_uid: &str) -> Value {
    json!({"metadata": {
        "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
        "uid": obj_uid,
    }})
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    use super::*;
    use crate::pods::test_pods::{owned_by, pod, t};

    fn web() -> Selector {
        Selector::new(&LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            match_expressions: None,
        })
        .unwrap()
    }

    fn claimant<'a>(sel: &'a Selector, deleting: bool) -> Claimant<'a> {
        Claimant {
            uid: "me",
            namespace: "ns",
            deleting,
            selector: sel,
        }
    }

    #[test]
    fn owned_and_selected_is_kept() {
        let s = web();
        let p = owned_by(pod("a"), "me");
        assert_eq!(claim(&claimant(&s, false), &p.metadata), Claim::Owned);
        assert_eq!(claim(&claimant(&s, true), &p.metadata), Claim::Owned);
    }

    #[test]
    fn owned_but_no_longer_selected_is_released_unless_we_are_going() {
        let s = web();
        let mut p = owned_by(pod("a"), "me");
        p.metadata.labels = Some(BTreeMap::from([("app".into(), "db".into())]));
        assert_eq!(claim(&claimant(&s, false), &p.metadata), Claim::Release);
        assert_eq!(claim(&claimant(&s, true), &p.metadata), Claim::Ignore);
    }

    #[test]
    fn selected_orphans_are_adopted() {
        let s = web();
        assert_eq!(
            claim(&claimant(&s, false), &pod("a").metadata),
            Claim::Adopt
        );
    }

    #[test]
    fn orphans_are_not_adopted_when_unselected_terminating_elsewhere_or_we_are_going() {
        let s = web();
        let mut other = pod("a");
        other.metadata.labels = None;
        assert_eq!(claim(&claimant(&s, false), &other.metadata), Claim::Ignore);
        let mut dying = pod("a");
        dying.metadata.deletion_timestamp = Some(Time(t(0)));
        assert_eq!(claim(&claimant(&s, false), &dying.metadata), Claim::Ignore);
        let mut elsewhere = pod("a");
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(
            claim(&claimant(&s, false), &elsewhere.metadata),
            Claim::Ignore
        );
        assert_eq!(
            claim(&claimant(&s, true), &pod("a").metadata),
            Claim::Ignore
        );
    }

    #[test]
    fn someone_elses_pods_are_left_alone() {
        let s = web();
        let p = owned_by(pod("a"), "them");
        assert_eq!(claim(&claimant(&s, false), &p.metadata), Claim::Ignore);
    }

    #[test]
    fn a_controller_ref_names_the_owner_and_blocks_its_deletion() {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some("web-1".into());
        rs.metadata.uid = Some("u1".into());
        let r = controller_ref(&rs);
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("apps/v1", "ReplicaSet", "web-1", "u1")
        );
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn patches_key_owner_references_by_uid() {
        let r = controller_ref(&ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let a = adopt_patch(&r, "p1");
        assert_eq!(a["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(a["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(a["metadata"]["uid"], "p1");
        let rel = release_patch("u1", "p1");
        assert_eq!(rel["metadata"]["ownerReferences"][0]["$patch"], "delete");
        assert_eq!(rel["metadata"]["ownerReferences"][0]["uid"], "u1");
    }
}
