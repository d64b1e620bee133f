//! A rolling update's bounds: `maxSurge` and `maxUnavailable` resolved
//! against `spec.replicas` the way upstream does (percent: surge rounds
//! up, unavailable rounds down; both resolving to 0 means 1 unavailable,
//! since surge alone might never fit).
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const RECREATE: &str = "Recreate";
pub const ROLLING_UPDATE: &str = "RollingUpdate";

/// `spec.replicas`, 1 when unset (the API server's default).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The strategy type; RollingUpdate when unset (the default).
pub fn strategy_type(d: &Deployment) -> &str {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or(ROLLING_UPDATE)
}

pub fn is_rolling(d: &Deployment) -> bool {
    strategy_type(d) == ROLLING_UPDATE
}

/// Upstream's `GetScaledValueFromIntOrPercent`.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let p: i32 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value {s:?}: not an integer or a percentage"))?;
            let exact = f64::from(p) * f64::from(total) / 100.0;
            Ok(if round_up {
                exact.ceil()
            } else {
                exact.floor()
            } as i32)
        }
    }
}

/// (maxSurge, maxUnavailable) for `desired` replicas: upstream's
/// `ResolveFenceposts`. Unset values count as 0 here; the API server
/// defaults both to 25%.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    if surge == 0 && unavailable == 0 {
        // Validation refuses two explicit zeros, but rounding down can get
        // here (25% of 3): let one Pod go rather than stall.
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let default = IntOrString::String("25%".into());
    let (surge, unavailable) = match ru {
        Some(ru) => (ru.max_surge.as_ref(), ru.max_unavailable.as_ref()),
        None => (Some(&default), Some(&default)),
    };
    // A bad value is refused by validation; resolve it as 0.
    resolve_fenceposts(surge, unavailable, replicas(d)).unwrap_or((0, 1))
}

/// How many Pods over `spec.replicas` a rolling update may run.
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).0
}

/// How many of `spec.replicas` a rolling update may have unavailable.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let want = replicas(d);
    if !is_rolling(d) || want == 0 {
        return 0;
    }
    fenceposts(d).1.min(want)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    fn d(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some(ROLLING_UPDATE.into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(scaled_value(&pct("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&pct("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&pct("100%"), 7, false), Ok(7));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, true), Ok(4));
        assert!(scaled_value(&pct("25"), 10, true).is_err());
    }

    #[test]
    fn both_resolving_to_zero_allows_one_unavailable() {
        assert_eq!(
            resolve_fenceposts(Some(&pct("0%")), Some(&pct("10%")), 3),
            Ok((0, 1))
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
            Ok((0, 1))
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), None, 5),
            Ok((2, 0))
        );
    }

    #[test]
    fn the_deployment_bounds_use_its_replicas() {
        let dep = d(10, pct("25%"), pct("25%"));
        assert_eq!((max_surge(&dep), max_unavailable(&dep)), (3, 2));
        let dep = d(4, IntOrString::Int(1), IntOrString::Int(9));
        assert_eq!(max_unavailable(&dep), 4, "capped at replicas");
        assert_eq!(max_unavailable(&d(0, pct("25%"), pct("25%"))), 0);
    }

    #[test]
    fn recreate_has_no_surge_or_unavailability_budget() {
        let mut dep = d(10, pct("25%"), pct("25%"));
        dep.spec.as_mut().unwrap().strategy.as_mut().unwrap().type_ = Some(RECREATE.into());
        assert_eq!((max_surge(&dep), max_unavailable(&dep)), (0, 0));
    }

    #[test]
    fn an_unset_strategy_is_a_default_rolling_update() {
        let dep = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_rolling(&dep));
        assert_eq!((max_surge(&dep), max_unavailable(&dep)), (1, 1));
    }
}
