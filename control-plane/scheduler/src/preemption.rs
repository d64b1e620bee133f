//! Preemption (upstream's DefaultPreemption PostFilter): when no node fits,
//! find a node where evicting lower-priority pods makes room - as few and as
//! unimportant as possible - so the pod can be nominated there. The choice
//! is pure; the scheduler's edge deletes the victims and writes the
//! nomination.
use std::{cmp::Ordering, collections::BTreeMap, sync::Arc};

use crate::{
    framework::{Code, Filtering, FitError, NodeInfo, PodInfo, Profile, Rejection, Snapshot},
    status::fit_error_message,
};

pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// A node and the pods to evict from it, most important first.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

#[derive(Debug)]
pub enum Outcome {
    /// The pod may not preempt (now); its nomination stays. The message is
    /// upstream's PostFilter message ("preemption: ...").
    NotEligible(String),
    /// No node would fit it even after evictions; any nomination is
    /// stale and goes.
    NoCandidate(String),
    Preempt(Candidate),
}

/// Upstream's `MoreImportantPod`: higher priority, then running longer.
pub fn more_important(a: &PodInfo, b: &PodInfo) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| match (a.start_time(), b.start_time()) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            _ => Ordering::Equal,
        })
}

/// Whether `pod` may preempt at all (upstream's
/// `PodEligibleToPreemptOthers`), else why not.
fn eligible(pod: &PodInfo, snapshot: &Snapshot, fit: &FitError) -> Result<(), String> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    if let Some(nominated) = pod.nominated_node() {
        let unresolvable = fit
            .statuses
            .get(nominated)
            .is_some_and(|r| r.code == Code::UnschedulableAndUnresolvable);
        if !unresolvable
            && let Some(node) = snapshot.get(nominated)
            && node
                .pods
                .iter()
                .any(|p| p.priority < pod.priority && terminating_by_preemption(p))
        {
            return Err("not eligible due to a terminating pod on the nominated node.".into());
        }
    }
    Ok(())
}

/// Being deleted by a scheduler's preemption (the DisruptionTarget
/// condition says so).
fn terminating_by_preemption(p: &PodInfo) -> bool {
    p.terminating()
        && p.pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                c.type_ == "DisruptionTarget"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("PreemptionByScheduler")
            })
}

/// The filters' verdict for `pod` on `node` standing in for its namesake in
/// `snapshot` (cluster-wide state recomputed with it).
fn fits(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    node: &NodeInfo,
) -> Result<(), Rejection> {
    let mut view = snapshot.clone();
    if let Ok(i) = view.nodes.binary_search_by(|n| n.name().cmp(node.name())) {
        view.nodes[i] = Arc::new(node.clone());
    }
    Filtering::new(profile, pod, &view).run_with_nominated(node)
}

/// Upstream's `SelectVictimsOnNode`: remove every lower-priority pod; if the
/// pod fits then, add them back most important first while it still fits;
/// the ones that could not come back are the victims.
pub fn select_victims(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    node: &NodeInfo,
) -> Result<Vec<Arc<PodInfo>>, Rejection> {
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return Err(Rejection::unresolvable(NO_VICTIMS));
    }
    let mut trial = node.clone();
    for p in &potential {
        trial.remove_pod(&p.key);
    }
    fits(profile, pod, snapshot, &trial)?;
    potential.sort_by(|a, b| more_important(a, b));
    let mut victims = Vec::new();
    for p in potential {
        trial.add_pod(p.clone());
        if fits(profile, pod, snapshot, &trial).is_err() {
            trial.remove_pod(&p.key);
            victims.push(p);
        }
    }
    Ok(victims)
}

/// Upstream's `pickOneNodeForPreemption` (no PodDisruptionBudgets yet):
/// the lowest highest-priority victim, then the lowest sum of priorities,
/// then the fewest victims, then the latest start among the most important
/// victims, then the first.
pub fn pick(candidates: &[Candidate]) -> Option<&Candidate> {
    let top = |c: &Candidate| c.victims.first().map_or(i32::MIN, |v| v.priority);
    let sum = |c: &Candidate| -> i64 {
        c.victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum()
    };
    let earliest_top_start = |c: &Candidate| {
        let t = top(c);
        c.victims
            .iter()
            .filter(|v| v.priority == t)
            .filter_map(|v| v.start_time().map(|s| s.0))
            .min()
    };
    candidates.iter().reduce(|best, c| {
        let ord = top(c)
            .cmp(&top(best))
            .then(sum(c).cmp(&sum(best)))
            .then(c.victims.len().cmp(&best.victims.len()))
            // Later is better: reverse.
            .then(earliest_top_start(best).cmp(&earliest_top_start(c)));
        if ord == Ordering::Less { c } else { best }
    })
}

/// How many candidate nodes to find before choosing (upstream's defaults:
/// 10% of the potential nodes, at least 100).
fn candidates_wanted(potential: usize) -> usize {
    (potential / 10).max(100).min(potential)
}

/// Runs preemption for `pod`, which fits nowhere per `fit`. `offset` picks
/// where the candidate search starts among the potential nodes.
pub fn preempt(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    fit: &FitError,
    offset: usize,
) -> Outcome {
    if let Err(msg) = eligible(pod, snapshot, fit) {
        return Outcome::NotEligible(format!("preemption: {msg}"));
    }
    // Nodes where removing pods may help: rejected as Unschedulable, not
    // UnschedulableAndUnresolvable.
    let potential: Vec<&Arc<NodeInfo>> = snapshot
        .nodes
        .iter()
        .filter(|n| {
            fit.statuses
                .get(n.name())
                .is_some_and(|r| r.code == Code::Unschedulable)
        })
        .collect();
    let mut statuses: BTreeMap<String, Rejection> = BTreeMap::new();
    let mut candidates = Vec::new();
    if !potential.is_empty() {
        let want = candidates_wanted(potential.len());
        for i in 0..potential.len() {
            let node = potential[(offset + i) % potential.len()];
            match select_victims(profile, pod, snapshot, node) {
                Ok(v) if !v.is_empty() => {
                    candidates.push(Candidate {
                        node: node.name().to_string(),
                        victims: v,
                    });
                    if candidates.len() >= want {
                        break;
                    }
                }
                Ok(_) => {
                    statuses.insert(node.name().to_string(), Rejection::unresolvable(NO_VICTIMS));
                }
                Err(r) => {
                    statuses.insert(node.name().to_string(), r);
                }
            }
        }
    }
    if let Some(best) = pick(&candidates) {
        return Outcome::Preempt(best.clone());
    }
    for n in &snapshot.nodes {
        statuses
            .entry(n.name().to_string())
            .or_insert_with(|| Rejection::unresolvable(NOT_HELPFUL));
    }
    let inner = FitError {
        num_all_nodes: snapshot.nodes.len(),
        statuses,
        post_filter_msg: None,
    };
    Outcome::NoCandidate(format!("preemption: {}", fit_error_message(&inner)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        framework::{Cursor, schedule},
        plugins::default_profile,
        testing::{NodeBuilder, PodBuilder, container, snapshot},
    };
    use k8s_openapi::api::core::v1::{Node, Pod};

    fn running(name: &str, node: &str, cpu: &str, priority: i32, started: i64) -> Pod {
        PodBuilder::new(name)
            .node(node)
            .priority(priority)
            .created_at(started)
            .container(container(cpu, ""))
            .build()
    }

    fn node(name: &str, cpu: &str) -> Node {
        NodeBuilder::new(name).cpu(cpu).build()
    }

    fn attempt(pod: &PodInfo, snap: &Snapshot) -> Outcome {
        let p = default_profile();
        let mut rng = fastrand::Rng::with_seed(1);
        let fit = schedule(&p, pod, snap, &mut rng, &mut Cursor(0)).expect_err("should not fit");
        preempt(&p, pod, snap, &fit, 0)
    }

    fn victims(o: &Outcome) -> (String, Vec<String>) {
        match o {
            Outcome::Preempt(c) => (
                c.node.clone(),
                c.victims.iter().map(|v| v.name.clone()).collect(),
            ),
            Outcome::NotEligible(m) | Outcome::NoCandidate(m) => panic!("no preemption: {m}"),
        }
    }

    fn high(cpu: &str) -> PodInfo {
        PodBuilder::new("high")
            .priority(100)
            .container(container(cpu, ""))
            .info()
    }

    #[test]
    fn the_fewest_lowest_priority_pods_are_evicted() {
        let snap = snapshot(
            vec![node("n1", "4")],
            vec![
                running("low-a", "n1", "1", 1, 0),
                running("low-b", "n1", "1", 2, 0),
                running("mid", "n1", "2", 50, 0),
            ],
        );
        // Needs 2 cpu. Reprieve goes most important first: "mid" comes
        // back and fits, then neither low pod does - upstream's choice too.
        assert_eq!(
            victims(&attempt(&high("2"), &snap)),
            ("n1".into(), vec!["low-b".into(), "low-a".into()])
        );
    }

    #[test]
    fn pods_of_equal_or_higher_priority_are_never_victims() {
        let snap = snapshot(
            vec![node("n1", "2")],
            vec![running("peer", "n1", "2", 100, 0)],
        );
        match attempt(&high("1"), &snap) {
            Outcome::NoCandidate(m) => assert_eq!(
                m,
                "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
            ),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn only_as_many_victims_as_needed() {
        let snap = snapshot(
            vec![node("n1", "3")],
            vec![
                running("a", "n1", "1", 1, 0),
                running("b", "n1", "1", 1, 5),
                running("c", "n1", "1", 1, 9),
            ],
        );
        let (_, v) = victims(&attempt(&high("1"), &snap));
        assert_eq!(v.len(), 1);
        assert_eq!(
            v,
            vec!["c".to_string()],
            "the youngest of equals goes (older ones reprieved first)"
        );
    }

    #[test]
    fn the_node_with_the_least_important_victims_is_chosen() {
        let snap = snapshot(
            vec![node("n1", "2"), node("n2", "2")],
            vec![
                running("mid", "n1", "2", 50, 0),
                running("low", "n2", "2", 10, 0),
            ],
        );
        assert_eq!(victims(&attempt(&high("2"), &snap)).0, "n2");
    }

    #[test]
    fn candidate_choice_order() {
        let v = |name: &str, prio: i32, start: i64| -> Arc<PodInfo> {
            Arc::new(
                PodBuilder::new(name)
                    .priority(prio)
                    .created_at(start)
                    .info(),
            )
        };
        let c = |node: &str, vs: Vec<Arc<PodInfo>>| Candidate {
            node: node.into(),
            victims: vs,
        };
        // Lower sum of priorities wins when the top priorities tie.
        let cs = vec![
            c("a", vec![v("x", 5, 0), v("y", 5, 0)]),
            c("b", vec![v("z", 5, 0), v("w", 1, 0)]),
        ];
        assert_eq!(pick(&cs).unwrap().node, "b");
        // Fewer victims next.
        let cs = vec![
            c("a", vec![v("x", 5, 0), v("y", 0, 0)]),
            c("b", vec![v("z", 5, 0)]),
        ];
        assert_eq!(pick(&cs).unwrap().node, "b");
        // Then the latest-started top victim.
        let cs = vec![c("a", vec![v("x", 5, 0)]), c("b", vec![v("z", 5, 100)])];
        assert_eq!(pick(&cs).unwrap().node, "b");
    }

    #[test]
    fn nodes_that_eviction_cannot_help_are_not_candidates() {
        let snap = snapshot(
            vec![
                NodeBuilder::new("tainted")
                    .taint("k", "v", "NoSchedule")
                    .cpu("1")
                    .build(),
                node("small", "1"),
            ],
            vec![running("low", "small", "1", 1, 0)],
        );
        match attempt(&high("2"), &snap) {
            Outcome::NoCandidate(m) => assert_eq!(
                m,
                "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
            ),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn preemption_policy_never_does_not_preempt() {
        let snap = snapshot(vec![node("n1", "1")], vec![running("low", "n1", "1", 1, 0)]);
        let pod = PodBuilder::new("high")
            .priority(100)
            .preemption_never()
            .container(container("1", ""))
            .info();
        match attempt(&pod, &snap) {
            Outcome::NotEligible(m) => {
                assert_eq!(m, "preemption: not eligible due to preemptionPolicy=Never.")
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn victims_being_preempted_on_the_nominated_node_make_the_pod_wait() {
        let mut victim = running("low", "n1", "1", 1, 0);
        victim.metadata.deletion_timestamp = PodBuilder::new("x")
            .terminating()
            .build()
            .metadata
            .deletion_timestamp;
        victim.status.as_mut().unwrap().conditions =
            Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("PreemptionByScheduler".into()),
                ..Default::default()
            }]);
        let snap = snapshot(vec![node("n1", "1")], vec![victim]);
        let pod = PodBuilder::new("high")
            .priority(100)
            .nominated("n1")
            .container(container("1", ""))
            .info();
        match attempt(&pod, &snap) {
            Outcome::NotEligible(m) => {
                assert_eq!(
                    m,
                    "preemption: not eligible due to a terminating pod on the nominated node."
                )
            }
            o => panic!("{o:?}"),
        }
    }
}
