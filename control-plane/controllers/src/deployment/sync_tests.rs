//! The Deployment planner, driven by a small simulated cluster: the
//! ReplicaSet controller gives each ReplicaSet its Pods at once (dropping
//! unavailable ones first, as its deletion order does) and kubelets make
//! up to `rate` of a ReplicaSet's Pods available per tick, except for
//! images listed as bad.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DeploymentSpec, DeploymentStrategy, ReplicaSetCondition, ReplicaSetStatus,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::pods::test_pods::{self, t};

fn int(i: i32) -> IntOrString {
    IntOrString::Int(i)
}

fn pct(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".into(), "web".into())])
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels()),
                match_expressions: None,
            },
            template: template("nginx:1"),
            strategy: Some(DeploymentStrategy {
                type_: Some(ROLLING_UPDATE.into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        }),
        status: None,
    }
}

fn recreate(replicas: i32) -> Deployment {
    let mut d = deployment(replicas, int(0), int(1));
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some(RECREATE.into()),
        rolling_update: None,
    });
    d
}

fn image(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

struct Sim {
    d: Deployment,
    rss: Vec<ReplicaSet>,
    pods: Vec<Pod>,
    clock: i64,
    created: usize,
    /// Pods per ReplicaSet that become available per tick.
    rate: i32,
    bad: Vec<String>,
    /// Check after every write that the ReplicaSets never want more than
    /// replicas + maxSurge and (rolling updates) that available Pods never
    /// drop under replicas - maxUnavailable once there were that many.
    check: bool,
    check_available: bool,
    writes: Vec<Write>,
}

impl Sim {
    fn new(d: Deployment) -> Self {
        Self {
            d,
            rss: Vec::new(),
            pods: Vec::new(),
            clock: 0,
            created: 0,
            rate: 1,
            bad: Vec::new(),
            check: true,
            check_available: true,
            writes: Vec::new(),
        }
    }

    fn want(&self) -> i32 {
        strategy::replicas(&self.d)
    }

    fn sync(&mut self) -> Plan {
        let plan = plan(Input {
            deployment: &self.d,
            replica_sets: self.rss.clone(),
            pods: &self.pods,
            now: t(self.clock),
        });
        let was_available = self.available() >= self.min_available();
        for w in &plan.writes {
            self.apply(w);
            if self.check {
                self.assert_bounds(was_available);
            }
        }
        self.writes.extend(plan.writes.iter().cloned());
        if let Some(a) = &plan.annotations {
            self.d.metadata.annotations = Some(a.clone());
        }
        if let Some(s) = &plan.status {
            self.d.status = Some(s.clone());
        }
        plan
    }

    fn min_available(&self) -> i32 {
        self.want() - strategy::max_unavailable(&self.d)
    }

    /// Available Pods once the ReplicaSet controller has acted.
    fn available(&self) -> i32 {
        self.rss
            .iter()
            .map(|rs| status::rs_available(rs).min(rs_replicas(rs)))
            .sum()
    }

    fn assert_bounds(&self, was_available: bool) {
        let total: i32 = self.rss.iter().map(rs_replicas).sum();
        let max = self.want() + strategy::max_surge(&self.d);
        assert!(
            total <= max,
            "{total} replicas over {max} at t={}",
            self.clock
        );
        if was_available && self.check_available {
            assert!(
                self.available() >= self.min_available(),
                "{} available under {} at t={}",
                self.available(),
                self.min_available(),
                self.clock
            );
        }
    }

    fn apply(&mut self, w: &Write) {
        match w {
            Write::Create { rs, .. } => {
                let mut rs = (**rs).clone();
                let name = name(&rs.metadata);
                assert!(
                    self.rss.iter().all(|o| name != self::name(&o.metadata)),
                    "{name} exists"
                );
                self.created += 1;
                rs.metadata.uid = Some(format!("rs-{}", self.created));
                rs.metadata.generation = Some(1);
                // Distinct and ordered, as the server's would be.
                rs.metadata.creation_timestamp = Some(Time(
                    t(self.clock)
                        + k8s_openapi::chrono::Duration::milliseconds(self.created as i64),
                ));
                rs.status = Some(ReplicaSetStatus::default());
                self.rss.push(rs);
            }
            Write::Update {
                name: n,
                replicas,
                annotations,
                min_ready_seconds,
                ..
            } => {
                let rs = self
                    .rss
                    .iter_mut()
                    .find(|rs| &name(&rs.metadata) == n)
                    .expect("update of a missing replica set");
                let spec = rs.spec.as_mut().unwrap();
                if spec.replicas != Some(*replicas) || spec.min_ready_seconds != *min_ready_seconds
                {
                    rs.metadata.generation = Some(rs.metadata.generation.unwrap_or(0) + 1);
                }
                spec.replicas = Some(*replicas);
                spec.min_ready_seconds = *min_ready_seconds;
                rs.metadata.annotations = Some(annotations.clone());
            }
            Write::Delete { name: n, .. } => {
                self.rss.retain(|rs| &name(&rs.metadata) != n);
            }
        }
    }

    /// The ReplicaSet controller and the kubelets take one step.
    fn tick(&mut self) {
        self.clock += 1;
        for rs in &mut self.rss {
            let spec = rs_replicas(rs);
            let good = !self.bad.contains(&image(rs));
            let generation = rs.metadata.generation;
            let st = rs.status.get_or_insert_with(Default::default);
            let mut available = st.available_replicas.unwrap_or(0).min(spec);
            if good {
                available = (available + self.rate).min(spec);
            }
            st.replicas = spec;
            st.ready_replicas = Some(available);
            st.available_replicas = Some(available);
            st.observed_generation = generation;
        }
    }

    /// Syncs and ticks until the rollout is complete as kubectl sees it.
    fn roll(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            self.sync();
            if self.rolled_out() {
                return;
            }
            self.tick();
        }
        panic!(
            "not rolled out after {max_steps} steps: {:?}",
            self.d.status
        );
    }

    /// `kubectl rollout status`'s success test.
    fn rolled_out(&self) -> bool {
        let s = status::status(&self.d);
        let c = |v: Option<i32>| v.unwrap_or(0);
        self.d.metadata.generation <= s.observed_generation
            && c(s.updated_replicas) >= self.want()
            && c(s.replicas) <= c(s.updated_replicas)
            && c(s.available_replicas) >= c(s.updated_replicas)
    }

    fn set_image(&mut self, image: &str) {
        self.d.spec.as_mut().unwrap().template = template(image);
        self.bump();
    }

    fn bump(&mut self) {
        self.d.metadata.generation = Some(self.d.metadata.generation.unwrap() + 1);
    }

    fn scale_to(&mut self, n: i32) {
        self.d.spec.as_mut().unwrap().replicas = Some(n);
        self.bump();
    }

    fn by_image(&self, img: &str) -> &ReplicaSet {
        self.rss
            .iter()
            .find(|rs| image(rs) == img)
            .unwrap_or_else(|| panic!("no replica set runs {img}"))
    }

    fn spec_of(&self, img: &str) -> i32 {
        rs_replicas(self.by_image(img))
    }

    fn progressing(&self) -> Option<String> {
        status::get_condition(&status::status(&self.d), status::PROGRESSING)
            .and_then(|c| c.reason.clone())
    }

    fn events(&self) -> Vec<String> {
        self.writes
            .iter()
            .filter_map(|w| match w {
                Write::Create { event, .. } | Write::Update { event, .. } => event.clone(),
                Write::Delete { .. } => None,
            })
            .collect()
    }
}

fn rolled_out(d: Deployment) -> Sim {
    let mut sim = Sim::new(d);
    sim.roll(100);
    sim
}

fn ann<'a>(rs: &'a ReplicaSet, k: &str) -> Option<&'a str> {
    rs.metadata.annotations.as_ref()?.get(k).map(String::as_str)
}

// ---- the first ReplicaSet --------------------------------------------------

#[test]
fn the_first_sync_creates_a_replica_set_at_full_size() {
    let mut sim = Sim::new(deployment(3, pct("25%"), pct("25%")));
    let plan = sim.sync();
    let Write::Create { rs, event } = &plan.writes[0] else {
        panic!("{:?}", plan.writes);
    };
    let hash = template::compute_hash(&template("nginx:1"), None);
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(rs_replicas(rs), 3);
    assert_eq!(
        event.as_deref(),
        Some(format!("Scaled up replica set web-{hash} to 3").as_str())
    );
    assert_eq!(plan.writes.len(), 1);
}

#[test]
fn the_replica_set_carries_the_hash_label_selector_and_owner() {
    let mut sim = Sim::new(deployment(3, pct("25%"), pct("25%")));
    sim.sync();
    let rs = &sim.rss[0];
    let hash = template::compute_hash(&template("nginx:1"), None);
    let h = template::POD_TEMPLATE_HASH_LABEL;
    assert_eq!(rs.metadata.labels.as_ref().unwrap()[h], hash);
    let spec = rs.spec.as_ref().unwrap();
    assert_eq!(spec.selector.match_labels.as_ref().unwrap()[h], hash);
    assert_eq!(spec.selector.match_labels.as_ref().unwrap()["app"], "web");
    assert_eq!(
        spec.template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()[h],
        hash
    );
    let owner = owner::controller_of(&rs.metadata).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Deployment", "d-uid")
    );
    assert_eq!(owner.block_owner_deletion, Some(true));
}

#[test]
fn revision_and_replica_annotations_are_set() {
    let sim = rolled_out(deployment(4, int(1), int(1)));
    let rs = &sim.rss[0];
    assert_eq!(ann(rs, revision::REVISION), Some("1"));
    assert_eq!(ann(rs, revision::DESIRED_REPLICAS), Some("4"));
    assert_eq!(ann(rs, revision::MAX_REPLICAS), Some("5"));
    assert_eq!(revision::revision(&sim.d.metadata), Some(1));
}

#[test]
fn a_collision_count_names_the_replica_set_differently() {
    let mut d = deployment(1, int(1), int(0));
    d.status = Some(DeploymentStatus {
        collision_count: Some(1),
        ..Default::default()
    });
    let mut sim = Sim::new(d);
    sim.sync();
    let hash = template::compute_hash(&template("nginx:1"), Some(1));
    assert_eq!(name(&sim.rss[0].metadata), format!("web-{hash}"));
    assert_ne!(hash, template::compute_hash(&template("nginx:1"), None));
}

// ---- status and conditions -------------------------------------------------

#[test]
fn status_counts_and_conditions_follow_the_rollout() {
    let mut sim = Sim::new(deployment(3, pct("25%"), pct("25%")));
    sim.sync();
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::NEW_REPLICA_SET_CREATED)
    );
    let s = status::status(&sim.d);
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(
        status::get_condition(&s, status::AVAILABLE)
            .unwrap()
            .reason
            .as_deref(),
        Some(status::MINIMUM_REPLICAS_UNAVAILABLE)
    );
    sim.tick();
    sim.sync();
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::REPLICA_SET_UPDATED)
    );
    sim.roll(20);
    let s = status::status(&sim.d);
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(s.unavailable_replicas, None);
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::NEW_REPLICA_SET_AVAILABLE)
    );
    let c = status::get_condition(&s, status::PROGRESSING).unwrap();
    assert_eq!(c.status, "True");
    assert_eq!(
        c.message.as_deref(),
        Some(
            format!(
                "ReplicaSet {:?} has successfully progressed.",
                name(&sim.rss[0].metadata)
            )
            .as_str()
        )
    );
    assert_eq!(
        status::get_condition(&s, status::AVAILABLE)
            .unwrap()
            .reason
            .as_deref(),
        Some(status::MINIMUM_REPLICAS_AVAILABLE)
    );
}

#[test]
fn a_settled_deployment_writes_nothing() {
    let mut sim = rolled_out(deployment(3, pct("25%"), pct("25%")));
    sim.tick();
    sim.sync();
    let plan = sim.sync();
    assert!(plan.writes.is_empty(), "{:?}", plan.writes);
    assert!(plan.status.is_none(), "{:?}", plan.status);
    assert!(plan.annotations.is_none());
    assert_eq!(plan.requeue_after, None, "complete: no deadline to watch");
}

#[test]
fn a_rollout_that_stops_progressing_times_out_after_the_deadline() {
    let mut d = deployment(3, int(1), int(0));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(30);
    let mut sim = rolled_out(d);
    sim.bad.push("nginx:broken".into());
    sim.set_image("nginx:broken");
    let mut stuck = None;
    for _ in 0..10 {
        let plan = sim.sync();
        if plan.status.is_none() {
            stuck = Some(plan);
            break;
        }
        sim.tick();
    }
    let plan = stuck.expect("the rollout settles, stuck");
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::REPLICA_SET_UPDATED)
    );
    let after = plan
        .requeue_after
        .expect("a stuck rollout is looked at again");
    assert!(after <= std::time::Duration::from_secs(31), "{after:?}");
    let s = status::status(&sim.d);
    let c = status::get_condition(&s, status::PROGRESSING).unwrap();
    sim.clock = c.last_update_time.as_ref().unwrap().0.timestamp() - t(0).timestamp() + 30;
    sim.sync();
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::REPLICA_SET_UPDATED),
        "not before the deadline"
    );
    sim.clock += 1;
    sim.sync();
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::PROGRESS_DEADLINE_EXCEEDED)
    );
    let s = status::status(&sim.d);
    let c = status::get_condition(&s, status::PROGRESSING).unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .as_deref()
            .unwrap()
            .ends_with("has timed out progressing.")
    );
    assert_eq!(
        status::get_condition(&s, status::AVAILABLE).unwrap().status,
        "True",
        "the old pods still serve"
    );
    assert_eq!(
        sim.sync().requeue_after,
        None,
        "timed out: nothing to wait for"
    );
}

#[test]
fn without_a_deadline_there_is_no_progressing_condition() {
    let mut d = deployment(2, int(1), int(0));
    d.spec.as_mut().unwrap().progress_deadline_seconds = None;
    let sim = rolled_out(d);
    assert_eq!(sim.progressing(), None);
}

#[test]
fn a_replica_failure_of_the_replica_set_is_the_deployments() {
    let mut sim = rolled_out(deployment(2, int(1), int(0)));
    sim.rss[0].status.as_mut().unwrap().conditions = Some(vec![ReplicaSetCondition {
        type_: "ReplicaFailure".into(),
        status: "True".into(),
        reason: Some("FailedCreate".into()),
        message: Some("quota".into()),
        last_transition_time: Some(Time(t(5))),
    }]);
    sim.sync();
    let s = status::status(&sim.d);
    let c = status::get_condition(&s, status::REPLICA_FAILURE).unwrap();
    assert_eq!(
        (c.reason.as_deref(), c.message.as_deref()),
        (Some("FailedCreate"), Some("quota"))
    );
    sim.rss[0].status.as_mut().unwrap().conditions = None;
    sim.sync();
    assert!(status::get_condition(&status::status(&sim.d), status::REPLICA_FAILURE).is_none());
}

// ---- rolling update ---------------------------------------------------------

/// Rolls v1 -> v2 and checks at every write that the ReplicaSets never
/// want more than replicas + maxSurge Pods and that available Pods never
/// drop under replicas - maxUnavailable.
fn rolling_update_keeps_bounds(
    replicas: i32,
    surge: IntOrString,
    unavailable: IntOrString,
    rate: i32,
) {
    let mut sim = Sim::new(deployment(replicas, surge.clone(), unavailable.clone()));
    sim.rate = rate;
    sim.roll(200);
    sim.set_image("nginx:2");
    sim.roll(400);
    let new = sim.by_image("nginx:2");
    assert_eq!(
        rs_replicas(new),
        replicas,
        "{replicas} {surge:?} {unavailable:?}"
    );
    assert_eq!(sim.spec_of("nginx:1"), 0);
    assert_eq!(ann(new, revision::REVISION), Some("2"));
    assert_eq!(revision::revision(&sim.d.metadata), Some(2));
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::NEW_REPLICA_SET_AVAILABLE)
    );
}

#[test]
fn rolling_updates_never_exceed_max_surge_or_max_unavailable() {
    let cases = [
        (10, pct("25%"), pct("25%")),
        (10, int(0), int(1)),
        (10, int(3), int(0)),
        (5, pct("50%"), pct("0%")),
        (1, int(1), int(0)),
        (1, int(0), int(1)),
        (3, pct("10%"), pct("10%")),
        (7, int(2), int(3)),
        (4, int(0), int(0)),
        (20, pct("100%"), pct("100%")),
    ];
    for (replicas, surge, unavailable) in cases {
        for rate in [1, 3, 100] {
            rolling_update_keeps_bounds(replicas, surge.clone(), unavailable.clone(), rate);
        }
    }
}

#[test]
fn a_rolling_update_starts_with_the_surge() {
    let mut sim = rolled_out(deployment(10, int(3), int(2)));
    sim.set_image("nginx:2");
    sim.sync();
    assert_eq!(sim.spec_of("nginx:2"), 3, "10 + 3 surge - 10 running");
    assert_eq!(sim.spec_of("nginx:1"), 8, "2 may be unavailable");
}

#[test]
fn scaling_events_record_from_and_to() {
    let mut sim = rolled_out(deployment(10, int(3), int(2)));
    sim.writes.clear();
    sim.set_image("nginx:2");
    sim.sync();
    let events = sim.events();
    let new = name(&sim.by_image("nginx:2").metadata);
    let old = name(&sim.by_image("nginx:1").metadata);
    assert_eq!(events[0], format!("Scaled up replica set {new} to 3"));
    assert_eq!(
        events[1],
        format!("Scaled down replica set {old} to 8 from 10")
    );
}

#[test]
fn unavailable_old_pods_are_scaled_down_first() {
    // 10 wanted, 5 may be unavailable, the old ReplicaSet has 4 of its 10
    // unavailable: those 4 go first (costing no availability), then 1 of
    // the 6 available ones.
    let mut sim = rolled_out(deployment(10, int(0), int(5)));
    sim.rss[0].status.as_mut().unwrap().available_replicas = Some(6);
    sim.check_available = false;
    sim.writes.clear();
    sim.set_image("nginx:2");
    sim.sync();
    assert_eq!(sim.spec_of("nginx:1"), 5);
    let old = name(&sim.by_image("nginx:1").metadata);
    assert_eq!(
        sim.events(),
        [
            format!("Scaled down replica set {old} to 6 from 10"),
            format!("Scaled down replica set {old} to 5 from 6"),
        ]
    );
}

#[test]
fn a_new_template_mid_rollout_rolls_over_to_a_third_replica_set() {
    let mut sim = rolled_out(deployment(6, int(2), int(1)));
    sim.set_image("nginx:2");
    sim.sync();
    sim.tick();
    sim.sync();
    sim.set_image("nginx:3");
    sim.roll(200);
    assert_eq!(sim.spec_of("nginx:3"), 6);
    assert_eq!(sim.spec_of("nginx:2"), 0);
    assert_eq!(sim.spec_of("nginx:1"), 0);
    assert_eq!(ann(sim.by_image("nginx:3"), revision::REVISION), Some("3"));
}

// ---- rollback and history ---------------------------------------------------

#[test]
fn rolling_back_reuses_the_old_replica_set_with_a_new_revision() {
    let mut sim = rolled_out(deployment(3, int(1), int(0)));
    sim.set_image("nginx:2");
    sim.roll(100);
    let v1 = name(&sim.by_image("nginx:1").metadata);
    // What kubectl rollout undo does: the old ReplicaSet's template,
    // pod-template-hash removed, becomes the Deployment's.
    sim.set_image("nginx:1");
    sim.roll(100);
    assert_eq!(sim.rss.len(), 2, "no third ReplicaSet");
    let rs = sim.by_image("nginx:1");
    assert_eq!(name(&rs.metadata), v1);
    assert_eq!(rs_replicas(rs), 3);
    assert_eq!(ann(rs, revision::REVISION), Some("3"));
    assert_eq!(ann(rs, revision::REVISION_HISTORY), Some("1"));
    assert_eq!(revision::revision(&sim.d.metadata), Some(3));
    assert_eq!(ann(sim.by_image("nginx:2"), revision::REVISION), Some("2"));
}

#[test]
fn change_cause_is_copied_to_the_new_replica_set() {
    let mut sim = rolled_out(deployment(1, int(1), int(0)));
    sim.d.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/change-cause".into(),
        "kubectl set image".into(),
    )]));
    sim.set_image("nginx:2");
    sim.roll(50);
    assert_eq!(
        ann(sim.by_image("nginx:2"), "kubernetes.io/change-cause"),
        Some("kubectl set image")
    );
}

#[test]
fn old_revisions_beyond_the_history_limit_are_deleted() {
    let mut d = deployment(2, int(1), int(0));
    d.spec.as_mut().unwrap().revision_history_limit = Some(2);
    let mut sim = rolled_out(d);
    for v in 2..=6 {
        sim.set_image(&format!("nginx:{v}"));
        sim.roll(100);
        sim.tick();
        sim.sync();
    }
    let mut kept: Vec<String> = sim.rss.iter().map(image).collect();
    kept.sort();
    assert_eq!(kept, ["nginx:4", "nginx:5", "nginx:6"]);
    assert!(sim.writes.iter().any(|w| matches!(w, Write::Delete { .. })));
}

/// Right after a v1 -> v2 rollout with revisionHistoryLimit 0: the old
/// ReplicaSet would be deleted by the next sync.
fn history_sim() -> (Sim, usize) {
    let mut d = deployment(2, int(1), int(0));
    d.spec.as_mut().unwrap().revision_history_limit = Some(0);
    let mut sim = rolled_out(d);
    sim.set_image("nginx:2");
    sim.roll(100);
    let old = sim
        .rss
        .iter()
        .position(|rs| image(rs) == "nginx:1")
        .unwrap();
    (sim, old)
}

fn deletes(plan: &Plan) -> usize {
    plan.writes
        .iter()
        .filter(|w| matches!(w, Write::Delete { .. }))
        .count()
}

#[test]
fn an_old_replica_set_past_the_limit_is_deleted() {
    let (mut sim, _) = history_sim();
    assert_eq!(deletes(&sim.sync()), 1);
}

#[test]
fn a_replica_set_still_counting_pods_is_not_deleted_for_history() {
    let (mut sim, old) = history_sim();
    sim.rss[old].status.as_mut().unwrap().replicas = 1;
    assert_eq!(deletes(&sim.sync()), 0);
}

#[test]
fn a_replica_set_whose_scale_down_is_unobserved_is_not_deleted_for_history() {
    let (mut sim, old) = history_sim();
    sim.rss[old].metadata.generation = Some(sim.rss[old].metadata.generation.unwrap() + 1);
    assert_eq!(deletes(&sim.sync()), 0);
}

#[test]
fn history_is_not_cleaned_mid_rollout() {
    let (mut sim, _) = history_sim();
    sim.d.status.as_mut().unwrap().available_replicas = Some(1);
    assert_eq!(deletes(&sim.sync()), 0);
}

// ---- scaling ----------------------------------------------------------------

#[test]
fn scaling_a_settled_deployment_scales_its_replica_set() {
    let mut sim = rolled_out(deployment(3, int(1), int(0)));
    sim.writes.clear();
    sim.scale_to(5);
    sim.sync();
    assert_eq!(rs_replicas(&sim.rss[0]), 5);
    assert_eq!(ann(&sim.rss[0], revision::DESIRED_REPLICAS), Some("5"));
    assert_eq!(
        sim.events(),
        [format!(
            "Scaled up replica set {} to 5 from 3",
            name(&sim.rss[0].metadata)
        )]
    );
    sim.scale_to(1);
    sim.sync();
    assert_eq!(rs_replicas(&sim.rss[0]), 1);
}

/// Two active ReplicaSets (foo-v1 = 3 old, foo-v2 = 2 new, annotated for
/// a 5-replica Deployment, no surge) and the Deployment scaled: upstream's
/// sync_test.go "proportional scaling" cases.
fn proportional(to: i32) -> (i32, i32) {
    let mut d = deployment(5, int(0), int(0));
    d.spec.as_mut().unwrap().replicas = Some(to);
    d.status = Some(DeploymentStatus {
        replicas: Some(5),
        ..Default::default()
    });
    let mk = |n: &str, img: &str, replicas: i32, at: i64| ReplicaSet {
        metadata: ObjectMeta {
            name: Some(n.into()),
            uid: Some(n.into()),
            creation_timestamp: Some(Time(t(at))),
            annotations: Some(BTreeMap::from([
                (revision::DESIRED_REPLICAS.into(), "5".into()),
                (revision::MAX_REPLICAS.into(), "5".into()),
            ])),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            template: Some(template(img)),
            ..Default::default()
        }),
        status: None,
    };
    d.spec.as_mut().unwrap().template = template("v2");
    let plan = plan(Input {
        deployment: &d,
        replica_sets: vec![mk("foo-v1", "v1", 3, 0), mk("foo-v2", "v2", 2, 10)],
        pods: &[],
        now: t(20),
    });
    let size = |n: &str, default: i32| {
        plan.writes
            .iter()
            .rev()
            .find_map(|w| match w {
                Write::Update { name, replicas, .. } if name == n => Some(*replicas),
                _ => None,
            })
            .unwrap_or(default)
    };
    (size("foo-v1", 3), size("foo-v2", 2))
}

#[test]
fn scaling_up_mid_rollout_is_proportional() {
    assert_eq!(proportional(10), (6, 4));
}

#[test]
fn scaling_down_mid_rollout_is_proportional() {
    assert_eq!(proportional(3), (2, 1));
}

#[test]
fn scaling_to_zero_mid_rollout_empties_every_replica_set() {
    assert_eq!(proportional(0), (0, 0));
}

#[test]
fn proportional_leftovers_go_to_the_biggest() {
    // 3:2 of 5 scaled to 6: 3.6 -> 4 and 2.4 -> 2 round to 6 exactly;
    // to 8: 4.8 -> 5, 3.2 -> 3.
    assert_eq!(proportional(6), (4, 2));
    assert_eq!(proportional(8), (5, 3));
}

#[test]
fn scaling_during_a_rollout_keeps_the_bounds() {
    let mut sim = rolled_out(deployment(10, int(2), int(2)));
    sim.set_image("nginx:2");
    sim.sync();
    sim.tick();
    sim.sync();
    sim.scale_to(20);
    sim.roll(400);
    assert_eq!(sim.spec_of("nginx:2"), 20);
    assert_eq!(sim.spec_of("nginx:1"), 0);
}

// ---- pause ------------------------------------------------------------------

#[test]
fn a_paused_deployment_does_not_roll_out_but_scales() {
    let mut sim = rolled_out(deployment(4, int(1), int(0)));
    sim.d.spec.as_mut().unwrap().paused = Some(true);
    sim.bump();
    sim.set_image("nginx:2");
    sim.sync();
    assert_eq!(sim.rss.len(), 1, "no new ReplicaSet while paused");
    assert_eq!(sim.progressing().as_deref(), Some(status::PAUSED));
    assert_eq!(
        status::get_condition(&status::status(&sim.d), status::PROGRESSING)
            .unwrap()
            .status,
        "Unknown"
    );
    sim.scale_to(6);
    sim.sync();
    assert_eq!(sim.spec_of("nginx:1"), 6);
    sim.d.spec.as_mut().unwrap().paused = Some(false);
    sim.bump();
    sim.sync();
    assert_eq!(sim.rss.len(), 2, "resumed: the rollout starts");
    sim.roll(100);
    assert_eq!(sim.spec_of("nginx:2"), 6);
}

#[test]
fn time_paused_does_not_count_against_the_deadline() {
    let mut d = deployment(4, int(1), int(0));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(10);
    let mut sim = rolled_out(d);
    sim.set_image("nginx:2");
    sim.sync();
    sim.tick();
    sim.sync();
    assert_eq!(
        sim.progressing().as_deref(),
        Some(status::REPLICA_SET_UPDATED)
    );
    sim.d.spec.as_mut().unwrap().paused = Some(true);
    sim.bump();
    sim.sync();
    sim.clock += 1000;
    sim.d.spec.as_mut().unwrap().paused = Some(false);
    sim.bump();
    sim.sync();
    assert_eq!(sim.progressing().as_deref(), Some(status::RESUMED));
    sim.roll(50);
}

// ---- recreate ---------------------------------------------------------------

#[test]
fn recreate_scales_the_old_down_before_creating_the_new() {
    let mut sim = Sim::new(recreate(3));
    sim.check_available = false;
    sim.roll(50);
    sim.set_image("nginx:2");
    sim.sync();
    assert_eq!(sim.rss.len(), 1, "no new ReplicaSet yet");
    assert_eq!(sim.spec_of("nginx:1"), 0);
    // The old Pods are still counted: wait.
    sim.sync();
    assert_eq!(sim.rss.len(), 1);
    sim.tick();
    // Counted no more, but one is still terminating: wait.
    let old_uid = sim.rss[0].metadata.uid.clone().unwrap();
    sim.pods = vec![test_pods::owned_by(
        test_pods::phase(test_pods::pod("old"), "Running"),
        &old_uid,
    )];
    sim.sync();
    assert_eq!(sim.rss.len(), 1);
    sim.pods = vec![test_pods::owned_by(
        test_pods::phase(test_pods::pod("old"), "Succeeded"),
        &old_uid,
    )];
    sim.sync();
    assert_eq!(sim.spec_of("nginx:2"), 3, "created at full size");
    sim.roll(50);
}

// ---- odd inputs --------------------------------------------------------------

#[test]
fn an_empty_selector_is_warned_about_and_nothing_else() {
    let mut d = deployment(2, int(1), int(0));
    d.spec.as_mut().unwrap().selector = LabelSelector::default();
    let mut sim = Sim::new(d);
    let plan = sim.sync();
    assert!(plan.writes.is_empty());
    assert_eq!(plan.warnings[0].reason, "SelectingAll");
    assert_eq!(status::status(&sim.d).observed_generation, Some(1));
}

#[test]
fn a_deployment_being_deleted_only_updates_status() {
    let mut sim = rolled_out(deployment(2, int(1), int(0)));
    sim.d.metadata.deletion_timestamp = Some(Time(t(0)));
    sim.set_image("nginx:2");
    let plan = sim.sync();
    assert!(plan.writes.is_empty());
    assert_eq!(status::status(&sim.d).observed_generation, Some(2));
}

#[test]
fn min_ready_seconds_is_passed_to_the_replica_sets() {
    let mut d = deployment(2, int(1), int(0));
    d.spec.as_mut().unwrap().min_ready_seconds = Some(7);
    let mut sim = rolled_out(d);
    assert_eq!(sim.rss[0].spec.as_ref().unwrap().min_ready_seconds, Some(7));
    sim.d.spec.as_mut().unwrap().min_ready_seconds = Some(9);
    sim.bump();
    sim.sync();
    assert_eq!(sim.rss[0].spec.as_ref().unwrap().min_ready_seconds, Some(9));
}
