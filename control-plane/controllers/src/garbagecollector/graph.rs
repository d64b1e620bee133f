//! The dependency graph (upstream's GraphBuilder): every watched object
//! by uid, and for every owner uid the objects that name it in their
//! ownerReferences. Observing a change says which objects the collector
//! must look at again; nothing here does I/O.
use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The finalizer the API server adds for `propagationPolicy=Orphan`.
pub const ORPHAN: &str = "orphan";
/// The finalizer the API server adds for `propagationPolicy=Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Where an object lives: what it takes to GET, PATCH or DELETE it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// `group/version` or `version` (core), as ownerReferences spell it.
    pub api_version: String,
    pub kind: String,
    /// None for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// An object as the collector sees it: its metadata, no more.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    /// metadata.deletionTimestamp is set.
    pub deleting: bool,
    pub finalizers: Vec<String>,
    pub resource_version: Option<String>,
}

impl Object {
    pub fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// Being deleted, its dependents first (Foreground).
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }

    /// Being deleted, its dependents orphaned first.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.has_finalizer(ORPHAN)
    }

    /// The reference this object holds to `owner`, if any.
    pub fn reference_to(&self, owner: &str) -> Option<&OwnerReference> {
        self.owners.iter().find(|o| o.uid == owner)
    }
}

/// An object the collector must look at again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// attemptToDelete: is this object garbage (or, being deleted in the
    /// foreground, are its blocking dependents gone)?
    Delete(String),
    /// attemptToOrphan: free this object's dependents, then let it go.
    Orphan(String),
}

#[derive(Default)]
pub struct Graph {
    nodes: HashMap<String, Object>,
    /// Owner uid -> uids of the observed objects that reference it (the
    /// owner itself may be absent: that is what makes them dangling).
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Object> {
        self.nodes.get(uid)
    }

    /// How many objects are observed.
    pub fn objects(&self) -> usize {
        self.nodes.len()
    }

    /// Every observed object that references `owner`.
    pub fn dependents(&self, owner: &str) -> Vec<&Object> {
        self.dependents
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
            .collect()
    }

    /// The dependents that hold a foreground deletion of `owner` back
    /// (their reference has blockOwnerDeletion).
    pub fn blocking_dependents(&self, owner: &str) -> Vec<&Object> {
        self.dependents(owner)
            .into_iter()
            .filter(|d| {
                d.reference_to(owner)
                    .is_some_and(|r| r.block_owner_deletion == Some(true))
            })
            .collect()
    }

    /// Whether the collector has reason to look at `obj`: an owner it has
    /// not observed where the reference points (maybe dangling: a
    /// namespaced owner must be in `obj`'s namespace), an owner deleting
    /// its dependents, or `obj` itself deleting its own. Objects whose
    /// every owner is observed and alive need no API call.
    pub fn needs_attention(&self, obj: &Object) -> bool {
        obj.deleting_dependents()
            || obj.owners.iter().any(|o| match self.nodes.get(&o.uid) {
                None => true,
                Some(owner) => {
                    owner.deleting_dependents()
                        || (owner.identity.namespace.is_some()
                            && owner.identity.namespace != obj.identity.namespace)
                }
            })
    }

    /// An object was added or changed (processGraphChanges).
    pub fn observe(&mut self, obj: Object) -> Vec<Work> {
        let uid = obj.identity.uid.clone();
        let mut work = BTreeSet::new();
        let old = self.nodes.insert(uid.clone(), obj.clone());
        let old_owners = old.as_ref().map(|o| o.owners.clone()).unwrap_or_default();
        // A reference that went or changed may unblock an owner waiting
        // for its dependents.
        for gone in old_owners
            .iter()
            .filter(|r| !obj.owners.iter().any(|n| n == *r))
        {
            if self
                .nodes
                .get(&gone.uid)
                .is_some_and(Object::deleting_dependents)
            {
                work.insert(Work::Delete(gone.uid.clone()));
            }
            if !obj.owners.iter().any(|n| n.uid == gone.uid)
                && let Some(set) = self.dependents.get_mut(&gone.uid)
            {
                set.remove(&uid);
                if set.is_empty() {
                    self.dependents.remove(&gone.uid);
                }
            }
        }
        for owner in &obj.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        if obj.orphaning() {
            work.insert(Work::Orphan(uid.clone()));
        }
        if obj.deleting_dependents() {
            for d in self.dependents.get(&uid).into_iter().flatten() {
                work.insert(Work::Delete(d.clone()));
            }
        }
        if self.needs_attention(&obj) {
            work.insert(Work::Delete(uid));
        }
        work.into_iter().collect()
    }

    /// An object is gone: its dependents may be garbage now, and an owner
    /// deleting its dependents may be free to go.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let Some(old) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut work = BTreeSet::new();
        for d in self.dependents.get(uid).into_iter().flatten() {
            work.insert(Work::Delete(d.clone()));
        }
        for owner in &old.owners {
            if self
                .nodes
                .get(&owner.uid)
                .is_some_and(Object::deleting_dependents)
            {
                work.insert(Work::Delete(owner.uid.clone()));
            }
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
        work.into_iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn owner_ref(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: format!("cm-{uid}"),
            uid: uid.into(),
            block_owner_deletion: block.then_some(true),
            controller: None,
        }
    }

    pub fn obj(uid: &str, owners: &[OwnerReference]) -> Object {
        Object {
            identity: Identity {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("default".into()),
                name: format!("cm-{uid}"),
                uid: uid.into(),
            },
            owners: owners.to_vec(),
            deleting: false,
            finalizers: Vec::new(),
            resource_version: Some("1".into()),
        }
    }

    pub fn deleting(mut o: Object, finalizer: &str) -> Object {
        o.deleting = true;
        o.finalizers.push(finalizer.into());
        o
    }

    #[test]
    fn a_dependent_of_an_unseen_owner_is_looked_at() {
        let mut g = Graph::default();
        assert_eq!(
            g.observe(obj("d", &[owner_ref("o", false)])),
            [Work::Delete("d".into())]
        );
        // Once the owner is seen alive, the dependent needs no look.
        assert!(g.observe(obj("o", &[])).is_empty());
        assert!(g.observe(obj("d", &[owner_ref("o", false)])).is_empty());
    }

    #[test]
    fn a_namespaced_owner_in_another_namespace_is_no_owner() {
        let mut g = Graph::default();
        let mut owner = obj("o", &[]);
        owner.identity.namespace = Some("elsewhere".into());
        g.observe(owner.clone());
        let d = obj("d", &[owner_ref("o", false)]);
        assert!(g.needs_attention(&d));
        // A cluster-scoped owner owns across namespaces.
        owner.identity.namespace = None;
        g.observe(owner);
        assert!(!g.needs_attention(&d));
    }

    #[test]
    fn an_owner_that_goes_sends_its_dependents_to_be_looked_at() {
        let mut g = Graph::default();
        g.observe(obj("o", &[]));
        g.observe(obj("d1", &[owner_ref("o", false)]));
        g.observe(obj("d2", &[owner_ref("o", true)]));
        g.observe(obj("other", &[]));
        assert_eq!(
            g.remove("o"),
            [Work::Delete("d1".into()), Work::Delete("d2".into())]
        );
        assert_eq!(g.dependents("o").len(), 2, "they still name it");
        assert!(g.remove("o").is_empty(), "removing twice does nothing");
    }

    #[test]
    fn foreground_deletion_looks_at_every_dependent_and_waits_for_blocking_ones() {
        let mut g = Graph::default();
        g.observe(obj("o", &[]));
        g.observe(obj("blocker", &[owner_ref("o", true)]));
        g.observe(obj("free", &[owner_ref("o", false)]));
        let work = g.observe(deleting(obj("o", &[]), FOREGROUND));
        assert_eq!(
            work,
            [
                Work::Delete("blocker".into()),
                Work::Delete("free".into()),
                Work::Delete("o".into())
            ]
        );
        let blocking: Vec<&str> = g
            .blocking_dependents("o")
            .iter()
            .map(|d| d.identity.uid.as_str())
            .collect();
        assert_eq!(blocking, ["blocker"]);
        // The blocker going (or dropping its reference) sends the owner back.
        assert_eq!(g.remove("blocker"), [Work::Delete("o".into())]);
        assert!(g.blocking_dependents("o").is_empty());
        g.observe(obj("b2", &[owner_ref("o", true)]));
        assert!(
            g.observe(obj("b2", &[]))
                .contains(&Work::Delete("o".into())),
            "a dropped blocking reference unblocks the owner"
        );
    }

    #[test]
    fn an_orphaning_owner_is_sent_to_orphan() {
        let mut g = Graph::default();
        g.observe(obj("d", &[owner_ref("o", false)]));
        assert_eq!(
            g.observe(deleting(obj("o", &[]), ORPHAN)),
            [Work::Orphan("o".into())]
        );
    }

    #[test]
    fn references_follow_updates() {
        let mut g = Graph::default();
        g.observe(obj("a", &[]));
        g.observe(obj("b", &[]));
        g.observe(obj("d", &[owner_ref("a", false)]));
        g.observe(obj("d", &[owner_ref("b", false)]));
        assert!(g.dependents("a").is_empty());
        assert_eq!(g.dependents("b").len(), 1);
        assert!(g.remove("a").is_empty());
    }
}
