//! What the collector does with one object, once it knows the state of
//! each of its owners (upstream's attemptToDeleteItem,
//! processDeletingDependentsItem and orphanDependents). Pure.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::graph::{FOREGROUND, Graph, ORPHAN, Object};

/// An owner, as a live read found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// There, with the uid the reference names, not deleting its dependents.
    Solid,
    /// Not there, or another object under that name (another uid).
    Dangling,
    /// There, being deleted in the foreground: waiting for its dependents.
    Waiting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Background,
    Foreground,
    Orphan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Delete the object (preconditions: its uid and resourceVersion).
    /// `unblock_first`: set blockOwnerDeletion false on its references
    /// before, so that a cycle of foreground deletions cannot deadlock.
    Delete {
        policy: Policy,
        unblock_first: bool,
    },
    /// Keep the object, without its references to these owner uids (gone,
    /// or waiting for it while another owner keeps it alive).
    DropReferences(Vec<String>),
}

/// The decision for an object that is not itself being deleted, given
/// each owner reference's state. `has_dependents`: something names this
/// object as owner; `a_dependent_deleting_dependents`: one of those is
/// itself deleting its dependents (a possible cycle).
pub fn dependent(
    item: &Object,
    owners: &[(String, OwnerState)],
    has_dependents: bool,
    a_dependent_deleting_dependents: bool,
) -> Action {
    if owners.is_empty() {
        return Action::Nothing;
    }
    let with = |s: OwnerState| -> Vec<String> {
        owners
            .iter()
            .filter(|(_, x)| *x == s)
            .map(|(u, _)| u.clone())
            .collect()
    };
    let (solid, dangling, waiting) = (
        with(OwnerState::Solid),
        with(OwnerState::Dangling),
        with(OwnerState::Waiting),
    );
    if !solid.is_empty() {
        if dangling.is_empty() && waiting.is_empty() {
            return Action::Nothing;
        }
        return Action::DropReferences([dangling, waiting].concat());
    }
    if !waiting.is_empty() && has_dependents {
        // Deleted in the foreground too, so the waiting owner waits for
        // this object's own dependents.
        return Action::Delete {
            policy: Policy::Foreground,
            unblock_first: a_dependent_deleting_dependents,
        };
    }
    // Every owner is gone (or waiting): garbage. A GC finalizer already
    // on it says how its own dependents go.
    let policy = if item.has_finalizer(ORPHAN) {
        Policy::Orphan
    } else if item.has_finalizer(FOREGROUND) {
        Policy::Foreground
    } else {
        Policy::Background
    };
    Action::Delete {
        policy,
        unblock_first: false,
    }
}

/// For an owner being deleted in the foreground.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForegroundStep {
    /// No blocking dependent is left: drop `foregroundDeletion` so it goes.
    RemoveFinalizer,
    /// Wait; look at these blocking dependents (those not themselves
    /// deleting their dependents) to delete them.
    Wait(Vec<String>),
}

pub fn deleting_dependents(graph: &Graph, owner: &str) -> ForegroundStep {
    let blocking = graph.blocking_dependents(owner);
    if blocking.is_empty() {
        return ForegroundStep::RemoveFinalizer;
    }
    ForegroundStep::Wait(
        blocking
            .into_iter()
            .filter(|d| !d.deleting_dependents())
            .map(|d| d.identity.uid.clone())
            .collect(),
    )
}

/// `refs` without those naming `uids` (what an orphaned or cleaned-up
/// dependent keeps).
pub fn without(refs: &[OwnerReference], uids: &[String]) -> Vec<OwnerReference> {
    refs.iter()
        .filter(|r| !uids.contains(&r.uid))
        .cloned()
        .collect()
}

/// `refs` with blockOwnerDeletion off.
pub fn unblocked(refs: &[OwnerReference]) -> Vec<OwnerReference> {
    refs.iter()
        .map(|r| OwnerReference {
            block_owner_deletion: r.block_owner_deletion.map(|_| false),
            ..r.clone()
        })
        .collect()
}

/// `finalizers` without `f`.
pub fn finalizers_without(finalizers: &[String], f: &str) -> Vec<String> {
    finalizers.iter().filter(|x| *x != f).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::super::graph::tests::{deleting, obj, owner_ref};
    use super::*;

    fn states(s: &[(&str, OwnerState)]) -> Vec<(String, OwnerState)> {
        s.iter().map(|(u, x)| (u.to_string(), *x)).collect()
    }

    const BACKGROUND: Action = Action::Delete {
        policy: Policy::Background,
        unblock_first: false,
    };

    #[test]
    fn an_object_whose_every_owner_is_gone_is_deleted() {
        let d = obj("d", &[owner_ref("a", false), owner_ref("b", false)]);
        assert_eq!(
            dependent(
                &d,
                &states(&[("a", OwnerState::Dangling), ("b", OwnerState::Dangling)]),
                false,
                false
            ),
            BACKGROUND
        );
    }

    #[test]
    fn a_live_owner_keeps_it_and_dead_references_are_dropped() {
        let d = obj("d", &[owner_ref("a", false), owner_ref("b", false)]);
        assert_eq!(
            dependent(
                &d,
                &states(&[("a", OwnerState::Solid), ("b", OwnerState::Dangling)]),
                false,
                false
            ),
            Action::DropReferences(vec!["b".into()])
        );
        assert_eq!(
            dependent(&d, &states(&[("a", OwnerState::Solid)]), false, false),
            Action::Nothing
        );
        assert_eq!(
            dependent(&obj("x", &[]), &[], false, false),
            Action::Nothing
        );
    }

    #[test]
    fn a_waiting_owner_takes_the_dependent_with_it() {
        let d = obj("d", &[owner_ref("a", true)]);
        let waiting = states(&[("a", OwnerState::Waiting)]);
        assert_eq!(dependent(&d, &waiting, false, false), BACKGROUND);
        // With dependents of its own, in the foreground too.
        assert_eq!(
            dependent(&d, &waiting, true, true),
            Action::Delete {
                policy: Policy::Foreground,
                unblock_first: true
            }
        );
        // Another live owner keeps it, without the waiting reference.
        assert_eq!(
            dependent(
                &d,
                &states(&[("a", OwnerState::Waiting), ("b", OwnerState::Solid)]),
                false,
                false
            ),
            Action::DropReferences(vec!["a".into()])
        );
    }

    #[test]
    fn a_gc_finalizer_on_garbage_sets_the_policy() {
        let mut d = obj("d", &[owner_ref("a", false)]);
        d.finalizers = vec![ORPHAN.into()];
        assert_eq!(
            dependent(&d, &states(&[("a", OwnerState::Dangling)]), false, false),
            Action::Delete {
                policy: Policy::Orphan,
                unblock_first: false
            }
        );
    }

    #[test]
    fn a_foreground_owner_goes_once_no_blocking_dependent_is_left() {
        let mut g = Graph::default();
        g.observe(deleting(obj("o", &[]), FOREGROUND));
        g.observe(obj("free", &[owner_ref("o", false)]));
        assert_eq!(
            deleting_dependents(&g, "o"),
            ForegroundStep::RemoveFinalizer
        );
        g.observe(obj("b1", &[owner_ref("o", true)]));
        g.observe(deleting(obj("b2", &[owner_ref("o", true)]), FOREGROUND));
        assert_eq!(
            deleting_dependents(&g, "o"),
            ForegroundStep::Wait(vec!["b1".into()]),
            "b2 is already deleting its own"
        );
    }

    #[test]
    fn references_and_finalizers_are_edited_by_uid_and_name() {
        let refs = [owner_ref("a", true), owner_ref("b", false)];
        let kept = without(&refs, &["a".into()]);
        assert_eq!(kept, [owner_ref("b", false)]);
        let un = unblocked(&refs);
        assert_eq!(un[0].block_owner_deletion, Some(false));
        assert_eq!(un[1].block_owner_deletion, None);
        assert_eq!(
            finalizers_without(&["x".into(), FOREGROUND.into()], FOREGROUND),
            ["x".to_string()]
        );
    }
}
