//! What a DELETE does to one object, as upstream's generic registry
//! (`Store.Delete`, `BeforeDelete`, `deletionFinalizersForGarbageCollection`)
//! decides it: preconditions, graceful deletion, and the garbage
//! collector's finalizers for the propagation policy. [`plan`] is pure;
//! the DELETE verbs below read the object, ask it, and write what it
//! says.
use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;

/// The finalizer that makes the garbage collector orphan an object's
/// dependents before the object goes.
pub const ORPHAN: &str = "orphan";
/// The finalizer that makes the garbage collector delete an object's
/// dependents (those blocking it first) before the object goes.
pub const FOREGROUND: &str = "foregroundDeletion";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Foreground,
    Background,
    Orphan,
}

/// `metav1.DeleteOptions`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub propagation: Option<Propagation>,
    /// The legacy form of Orphan (true) / Background (false).
    pub orphan_dependents: Option<bool>,
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// Why a DeleteOptions is refused: upstream's 400 (undecodable) or 422
/// (`DeleteOptions.meta.k8s.io "" is invalid: ...`).
#[derive(Debug, PartialEq, Eq)]
pub enum BadOptions {
    Malformed(String),
    Invalid(Vec<(String, String)>),
}

impl Options {
    /// From the request: a body (JSON DeleteOptions) wins, as upstream,
    /// else the query parameters.
    pub fn from_request(body: &[u8], q: &HashMap<String, String>) -> Result<Self, BadOptions> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
        let raw: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
            let int = |k: &str| -> Result<Option<i64>, BadOptions> {
                q.get(k)
                    .filter(|v| !v.is_empty())
                    .map(|v| {
                        v.parse::<i64>()
                            .map_err(|_| BadOptions::Malformed(format!("{k}: invalid value {v:?}")))
                    })
                    .transpose()
            };
            let boolean = |k: &str| -> Result<Option<bool>, BadOptions> {
                q.get(k)
                    .filter(|v| !v.is_empty())
                    .map(|v| match v.as_str() {
                        "true" | "1" => Ok(true),
                        "false" | "0" => Ok(false),
                        _ => Err(BadOptions::Malformed(format!("{k}: invalid value {v:?}"))),
                    })
                    .transpose()
            };
            DeleteOptions {
                propagation_policy: q.get("propagationPolicy").cloned(),
                grace_period_seconds: int("gracePeriodSeconds")?,
                orphan_dependents: boolean("orphanDependents")?,
                dry_run: q.get("dryRun").map(|d| vec![d.clone()]),
                ..Default::default()
            }
        } else {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| BadOptions::Malformed(format!("malformed DeleteOptions: {e}")))?;
            if let Some(k) = v.get("kind").and_then(Value::as_str)
                && k != "DeleteOptions"
            {
                return Err(BadOptions::Malformed(format!(
                    "kind {k:?} sent as the options of a delete"
                )));
            }
            serde_json::from_value(v)
                .map_err(|e| BadOptions::Malformed(format!("malformed DeleteOptions: {e}")))?
        };
        let mut causes = Vec::new();
        if raw.orphan_dependents.is_some() && raw.propagation_policy.is_some() {
            causes.push((
                "propagationPolicy".to_string(),
                format!(
                    "Invalid value: {:?}: orphanDependents and deletionPropagation cannot be both set",
                    raw.propagation_policy.as_deref().unwrap_or_default()
                ),
            ));
        }
        let propagation = match raw.propagation_policy.as_deref() {
            None => None,
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Background") => Some(Propagation::Background),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => {
                causes.push((
                    "propagationPolicy".to_string(),
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                ));
                None
            }
        };
        let dry = raw.dry_run.unwrap_or_default();
        if let Some(bad) = dry.iter().find(|d| *d != "All") {
            causes.push((
                "dryRun".to_string(),
                format!("Unsupported value: {bad:?}: supported values: \"All\""),
            ));
        }
        if !causes.is_empty() {
            return Err(BadOptions::Invalid(causes));
        }
        let pre = raw.preconditions.unwrap_or_default();
        Ok(Self {
            propagation,
            orphan_dependents: raw.orphan_dependents,
            // Negative is taken as 1 s, as upstream does.
            grace_period_seconds: raw.grace_period_seconds.map(|g| if g < 0 { 1 } else { g }),
            uid: pre.uid,
            resource_version: pre.resource_version,
            dry_run: !dry.is_empty(),
        })
    }

    /// Whether dependents are to be orphaned (upstream's
    /// shouldOrphanDependents): the options, then the finalizers already
    /// there, then the kind's default (Background for every kind served).
    fn orphans(&self, finalizers: &[String]) -> bool {
        if let Some(o) = self.orphan_dependents {
            return o;
        }
        match self.propagation {
            Some(p) => p == Propagation::Orphan,
            None => finalizers
                .iter()
                .find(|f| *f == ORPHAN || *f == FOREGROUND)
                .is_some_and(|f| f == ORPHAN),
        }
    }

    /// Whether dependents are deleted first (shouldDeleteDependents).
    fn foreground(&self, finalizers: &[String]) -> bool {
        if self.orphan_dependents.is_some() {
            return false;
        }
        match self.propagation {
            Some(p) => p == Propagation::Foreground,
            None => finalizers
                .iter()
                .find(|f| *f == ORPHAN || *f == FOREGROUND)
                .is_some_and(|f| f == FOREGROUND),
        }
    }

    /// The finalizers the object should carry for this delete: the two
    /// garbage-collection ones replaced by what the options ask.
    fn finalizers(&self, current: &[String]) -> Vec<String> {
        let mut out: Vec<String> = current
            .iter()
            .filter(|f| *f != ORPHAN && *f != FOREGROUND)
            .cloned()
            .collect();
        if self.orphans(current) {
            out.push(ORPHAN.into());
        }
        if self.foreground(current) {
            out.push(FOREGROUND.into());
        }
        out
    }
}

/// A kind's graceful-deletion rule: the grace period a delete gets, given
/// the one asked for.
pub type Grace = fn(&Value, Option<i64>) -> i64;

/// What the handler does with the object.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// A graceful deletion is already under way: nothing changes.
    Pending,
    /// Write this (marked as deleting, finalizers set); the object stays
    /// until its finalizers are gone and, for graceful kinds, its owner
    /// (the kubelet) deletes it with grace 0.
    Mark(Value),
    /// Remove the object now.
    Remove,
}

/// A failed precondition: upstream's 409, its message.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict(pub String);

/// Decides the delete of `obj` (as stored, with its resourceVersion as
/// `rv`). `grace` is the kind's graceful-deletion rule: None for kinds
/// that go at once, else the grace period it grants given the one asked
/// for (pods: their terminationGracePeriodSeconds, 0 when unscheduled or
/// finished). `now` is an RFC 3339 time source, in seconds.
pub fn plan(
    obj: &Value,
    rv: &str,
    opts: &Options,
    grace: Option<Grace>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Plan, Conflict> {
    let meta = &obj["metadata"];
    let kind = obj["kind"].as_str().unwrap_or("object");
    let name = meta["name"].as_str().unwrap_or_default();
    let conflict = |why: String| {
        Conflict(format!(
            "Operation cannot be fulfilled on {kind} \"{name}\": {why}"
        ))
    };
    let uid = meta["uid"].as_str().unwrap_or_default();
    if let Some(want) = opts.uid.as_deref()
        && want != uid
    {
        return Err(conflict(format!(
            "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
        )));
    }
    if let Some(want) = opts.resource_version.as_deref()
        && want != rv
    {
        return Err(conflict(format!(
            "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
        )));
    }
    let mut out = obj.clone();
    if let Some(m) = out["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let stamp = |t: chrono::DateTime<chrono::Utc>| {
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    let deleting = meta["deletionTimestamp"].as_str().and_then(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    });
    let pending_grace = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
    // BeforeDelete: graceful deletion for kinds that have it.
    let mut graceful = None;
    match (grace, deleting) {
        (Some(_), Some(at)) if pending_grace > 0 => match opts.grace_period_seconds {
            // Only a shorter grace period may be asked once it started.
            Some(g) if g < pending_grace => {
                let at =
                    at - chrono::Duration::seconds(pending_grace) + chrono::Duration::seconds(g);
                out["metadata"]["deletionTimestamp"] = stamp(at);
                out["metadata"]["deletionGracePeriodSeconds"] = json!(g);
                graceful = Some(g);
            }
            _ => return Ok(Plan::Pending),
        },
        (Some(rule), None) => {
            let g = rule(obj, opts.grace_period_seconds);
            out["metadata"]["deletionTimestamp"] = stamp(now + chrono::Duration::seconds(g));
            out["metadata"]["deletionGracePeriodSeconds"] = json!(g);
            bump_generation(&mut out);
            graceful = Some(g);
        }
        _ => {}
    }
    let current: Vec<String> = meta["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    let wanted = opts.finalizers(&current);
    let changed = {
        let (mut a, mut b) = (current.clone(), wanted.clone());
        a.sort();
        a.dedup();
        b.sort();
        b.dedup();
        a != b
    };
    if graceful.is_none() && current.is_empty() && !changed {
        return Ok(Plan::Remove);
    }
    if changed {
        out["metadata"]["finalizers"] = json!(wanted);
    }
    if wanted.is_empty()
        && let Some(m) = out["metadata"].as_object_mut()
    {
        m.remove("finalizers");
    }
    match graceful {
        None if wanted.is_empty() => Ok(Plan::Remove),
        None => {
            // markAsDeleting: the first time, generation moves.
            if deleting.is_none() {
                bump_generation(&mut out);
            }
            if deleting.is_none_or(|at| at > now) {
                out["metadata"]["deletionTimestamp"] = stamp(now);
            }
            out["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            Ok(Plan::Mark(out))
        }
        Some(0) if wanted.is_empty() => Ok(Plan::Remove),
        Some(_) => Ok(Plan::Mark(out)),
    }
}

fn bump_generation(obj: &mut Value) {
    if let Some(g) = obj["metadata"]["generation"].as_i64().filter(|g| *g > 0) {
        obj["metadata"]["generation"] = json!(g + 1);
    }
}

// The DELETE verbs.

/// Deletes what a namespace holds (every object, at once), before the
/// namespace itself goes. Every object is read first: a corrupt one stops
/// the delete before anything goes.
pub(crate) async fn delete_contents(api: &Api, ns: &str) -> Result<(), ApiError> {
    let mut contents = Vec::new();
    for res in registry::RESOURCES
        .iter()
        .filter(|x| x.namespaced && x.view.is_none())
    {
        let page = list_all(api, res, Some(ns)).await?;
        for kv in &page.kvs {
            served(res, kv)?;
        }
        contents.push((res, page.kvs));
    }
    for (res, kvs) in contents {
        for kv in kvs {
            match api.store.delete(&kv.key, None).await {
                Ok((_, gone)) => forget(api, res, &served(res, &gone)?).await,
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(ApiError::store(res, "", e)),
            }
        }
    }
    Ok(())
}

/// DELETE of one object, as upstream's registry does it ([`plan`]):
/// preconditions, graceful deletion for pods, and the propagation policy
/// as the garbage collector's finalizers. An object with finalizers only
/// gets a deletionTimestamp; whoever removes the last finalizer (an update
/// or patch) completes the delete. A namespace takes its contents with it.
/// `dryRun=All` answers the same and changes nothing.
pub(super) async fn delete(
    api: &Shared,
    t: &Target,
    name: &str,
    opts: &Options,
) -> Result<Response, ApiError> {
    let r = t.resource;
    r.strategy.check_delete(name)?;
    let key = r.key(t.namespace.as_deref(), name);
    // Like upstream's GuaranteedUpdate: retry while others win the race,
    // unless the client pinned a resourceVersion.
    for _ in 0..64 {
        let cur = current(api, t, name).await?;
        let obj = served(r, &cur)?;
        let rv = cur.mod_revision.to_string();
        let plan = plan(
            &obj,
            &rv,
            opts,
            r.strategy.deletion_grace(),
            chrono::Utc::now(),
        )
        .map_err(|c| ApiError::new(Reason::Conflict, c.0))?;
        // Upstream's 202 is only for the legacy orphanDependents=false.
        let pending = if opts.orphan_dependents == Some(false) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        match plan {
            Plan::Pending => return Ok((pending, axum::Json(obj)).into_response()),
            Plan::Mark(marked) => {
                let mut bare = obj.clone();
                if let Some(m) = bare["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let unchanged = bare == marked;
                if opts.dry_run || unchanged {
                    let shown = r.stamp(marked, cur.mod_revision);
                    return Ok((pending, axum::Json(shown)).into_response());
                }
                let bytes = r
                    .encode(&marked)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                match api.store.update(&key, bytes, cur.mod_revision).await {
                    Ok(rev) => {
                        let shown = r.stamp(marked, rev);
                        return Ok((pending, axum::Json(shown)).into_response());
                    }
                    Err(StoreError::Conflict { .. }) if opts.resource_version.is_none() => {
                        continue;
                    }
                    Err(e) => return Err(ApiError::store(r, name, e)),
                }
            }
            Plan::Remove => {
                if opts.dry_run {
                    return Ok(axum::Json(obj).into_response());
                }
                r.strategy.before_remove(api, name).await?;
                match api.store.delete(&key, Some(cur.mod_revision)).await {
                    Ok((rev, gone)) => {
                        let mut obj = served(r, &gone)?;
                        forget(api, r, &obj).await;
                        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                        return Ok(axum::Json(obj).into_response());
                    }
                    Err(StoreError::Conflict { .. }) if opts.resource_version.is_none() => {
                        continue;
                    }
                    Err(e) => return Err(ApiError::store(r, name, e)),
                }
            }
        }
    }
    Err(ApiError::store(
        r,
        name,
        StoreError::Conflict {
            key,
            expected: 0,
            current: None,
        },
    ))
}

/// DELETE of a collection: every object the selectors match, one by one.
pub(super) async fn delete_collection(
    api: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    opts: &Options,
) -> Result<Response, ApiError> {
    let r = t.resource;
    let filter = Filter::from_query(q)?;
    let page = list_all(api, r, t.namespace.as_deref()).await?;
    let mut items = Vec::new();
    for kv in &page.kvs {
        let obj = served(r, kv)?;
        if !filter.matches(&obj) {
            continue;
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // A cluster-wide collection delete reaches every namespace.
        let one = Target {
            resource: r,
            namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
            name: None,
            sub: None,
        };
        match delete(api, &one, &name, opts).await {
            Ok(_) => items.push(obj),
            Err(e) if e.reason == Reason::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(axum::Json(json!({
        "kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": page.revision.to_string()}, "items": items,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc)
    }

    fn cm(finalizers: &[&str]) -> Value {
        let mut o = json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u1", "resourceVersion": "7"}});
        if !finalizers.is_empty() {
            o["metadata"]["finalizers"] = json!(finalizers);
        }
        o
    }

    fn opts(body: &str) -> Options {
        Options::from_request(body.as_bytes(), &HashMap::new()).expect("valid options")
    }

    fn plan_of(obj: &Value, o: &Options) -> Plan {
        plan(obj, "7", o, None, now()).expect("no conflict")
    }

    #[test]
    fn the_body_wins_over_the_query() {
        let o = Options::from_request(
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Orphan"}"#,
            &q(&[("propagationPolicy", "Foreground")]),
        )
        .expect("valid");
        assert_eq!(o.propagation, Some(Propagation::Orphan));
        let o = Options::from_request(
            b"",
            &q(&[
                ("propagationPolicy", "Foreground"),
                ("gracePeriodSeconds", "-5"),
                ("dryRun", "All"),
            ]),
        )
        .expect("valid");
        assert_eq!(o.propagation, Some(Propagation::Foreground));
        assert_eq!(o.grace_period_seconds, Some(1), "negative grace is 1 s");
        assert!(o.dry_run);
    }

    #[test]
    fn bad_options_are_named() {
        match Options::from_request(b"", &q(&[("propagationPolicy", "Sideways")])) {
            Err(BadOptions::Invalid(c)) => {
                assert_eq!(c[0].0, "propagationPolicy");
                assert!(c[0].1.contains("\"Sideways\""), "{c:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Options::from_request(
                br#"{"orphanDependents":true,"propagationPolicy":"Orphan"}"#,
                &HashMap::new()
            ),
            Err(BadOptions::Invalid(_))
        ));
        assert!(matches!(
            Options::from_request(b"", &q(&[("dryRun", "Some")])),
            Err(BadOptions::Invalid(_))
        ));
        assert!(matches!(
            Options::from_request(b"{not json", &HashMap::new()),
            Err(BadOptions::Malformed(_))
        ));
    }

    #[test]
    fn background_removes_at_once() {
        assert_eq!(plan_of(&cm(&[]), &opts("")), Plan::Remove);
        assert_eq!(
            plan_of(&cm(&[]), &opts(r#"{"propagationPolicy":"Background"}"#)),
            Plan::Remove
        );
    }

    #[test]
    fn foreground_and_orphan_add_their_finalizer_and_mark() {
        for (policy, fin) in [("Foreground", FOREGROUND), ("Orphan", ORPHAN)] {
            let Plan::Mark(o) = plan_of(
                &cm(&[]),
                &opts(&format!(r#"{{"propagationPolicy":"{policy}"}}"#)),
            ) else {
                panic!("{policy} must keep the object");
            };
            assert_eq!(o["metadata"]["finalizers"], json!([fin]), "{policy}");
            assert_eq!(o["metadata"]["deletionTimestamp"], "2030-01-01T00:00:00Z");
            assert_eq!(o["metadata"]["deletionGracePeriodSeconds"], 0);
        }
        // The legacy flag.
        let Plan::Mark(o) = plan_of(&cm(&[]), &opts(r#"{"orphanDependents":true}"#)) else {
            panic!("orphanDependents keeps the object");
        };
        assert_eq!(o["metadata"]["finalizers"], json!([ORPHAN]));
    }

    #[test]
    fn a_new_policy_replaces_the_other_gc_finalizer_and_keeps_others() {
        let Plan::Mark(o) = plan_of(
            &cm(&["example.com/x", FOREGROUND]),
            &opts(r#"{"propagationPolicy":"Orphan"}"#),
        ) else {
            panic!("finalizers keep the object");
        };
        assert_eq!(
            o["metadata"]["finalizers"],
            json!(["example.com/x", ORPHAN])
        );
        // No policy: the finalizer already there decides.
        let Plan::Mark(o) = plan_of(&cm(&[ORPHAN]), &opts("")) else {
            panic!("finalizers keep the object");
        };
        assert_eq!(o["metadata"]["finalizers"], json!([ORPHAN]));
        // Background on an object held only by a GC finalizer removes it.
        assert_eq!(
            plan_of(
                &cm(&[ORPHAN]),
                &opts(r#"{"propagationPolicy":"Background"}"#)
            ),
            Plan::Remove
        );
    }

    #[test]
    fn preconditions_that_do_not_hold_are_conflicts() {
        let e = plan(
            &cm(&[]),
            "7",
            &opts(r#"{"preconditions":{"uid":"other"}}"#),
            None,
            now(),
        )
        .expect_err("uid mismatch");
        assert!(e.0.contains("UID in the precondition (other)"), "{}", e.0);
        let e = plan(
            &cm(&[]),
            "7",
            &opts(r#"{"preconditions":{"resourceVersion":"6"}}"#),
            None,
            now(),
        )
        .expect_err("rv mismatch");
        assert!(
            e.0.contains("ResourceVersion in the precondition (6)"),
            "{}",
            e.0
        );
        assert_eq!(
            plan(
                &cm(&[]),
                "7",
                &opts(r#"{"preconditions":{"uid":"u1","resourceVersion":"7"}}"#),
                None,
                now()
            ),
            Ok(Plan::Remove)
        );
    }

    fn pod_grace(obj: &Value, asked: Option<i64>) -> i64 {
        asked.unwrap_or(
            obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0),
        )
    }

    #[test]
    fn graceful_kinds_are_marked_then_only_shortened() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "uid": "u", "generation": 1},
                         "spec": {"terminationGracePeriodSeconds": 30}});
        let rule: Grace = pod_grace;
        let Ok(Plan::Mark(marked)) = plan(&pod, "1", &opts(""), Some(rule), now()) else {
            panic!("a pod with grace is only marked");
        };
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2030-01-01T00:00:30Z"
        );
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(marked["metadata"]["generation"], 2);
        // Again without a shorter grace: nothing changes.
        assert_eq!(
            plan(&marked, "2", &opts(""), Some(rule), now()),
            Ok(Plan::Pending)
        );
        // Grace 0 (the kubelet's final delete) removes it.
        assert_eq!(
            plan(
                &marked,
                "2",
                &opts(r#"{"gracePeriodSeconds":0}"#),
                Some(rule),
                now()
            ),
            Ok(Plan::Remove)
        );
        // Grace 0 from the start too.
        assert_eq!(
            plan(
                &pod,
                "1",
                &opts(r#"{"gracePeriodSeconds":0}"#),
                Some(rule),
                now()
            ),
            Ok(Plan::Remove)
        );
    }
}
