//! The plugin's own network configuration keys (DESIGN.md's contract):
//! `{"type":"sluice-cni","podCIDR":"10.244.1.0/24","dataDir":"/var/lib/sluice/ipam",
//! "bpffs":"/sys/fs/bpf/sluice","mtu":1500}`. Every bad value is a code-7
//! error naming the key and the value.
use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use rscni_plugin::error::Error;
use serde_json::Value;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/sluice/ipam";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/sluice";
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Clone, Debug)]
pub struct Conf {
    /// The network's `name`: IPAM allocations are kept per network.
    pub network: String,
    pub pod_cidr: Ipv4Net,
    pub data_dir: PathBuf,
    pub bpffs: PathBuf,
    pub mtu: u32,
}

impl Conf {
    /// The pod gateway: the first address of the pod CIDR, owned by every
    /// host-side veth.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()) + 1)
    }
}

fn invalid(key: &str, value: &Value, why: &str) -> Error {
    Error::Custom(
        7,
        "Invalid network config".into(),
        format!("{key}: invalid value {value}: {why}"),
    )
}

fn path(custom: &HashMap<String, Value>, key: &str, default: &str) -> Result<PathBuf, Error> {
    match custom.get(key) {
        None | Some(Value::Null) => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if s.starts_with('/') => Ok(PathBuf::from(s)),
        Some(v @ Value::String(_)) => Err(invalid(key, v, "must be an absolute path")),
        Some(v) => Err(invalid(key, v, "must be a string")),
    }
}

/// Reads sluice's keys from the config's extra fields. `podCIDR` is
/// required (no agent publishes one yet).
pub fn parse(network: &str, custom: &HashMap<String, Value>) -> Result<Conf, Error> {
    let pod_cidr = match custom.get("podCIDR") {
        None | Some(Value::Null) => {
            return Err(Error::Custom(
                7,
                "Invalid network config".into(),
                "podCIDR: missing (an IPv4 CIDR such as 10.244.1.0/24)".into(),
            ));
        }
        Some(v @ Value::String(s)) => {
            let net: Ipv4Net = s
                .parse()
                .map_err(|e| invalid("podCIDR", v, &format!("{e} (an IPv4 CIDR)")))?;
            if net.prefix_len() > 30 {
                return Err(invalid(
                    "podCIDR",
                    v,
                    "prefix longer than /30 leaves no pod address",
                ));
            }
            if net.trunc() != net {
                return Err(invalid(
                    "podCIDR",
                    v,
                    &format!("host bits set (did you mean {}?)", net.trunc()),
                ));
            }
            net
        }
        Some(v) => return Err(invalid("podCIDR", v, "must be a string")),
    };
    let mtu = match custom.get("mtu") {
        None | Some(Value::Null) => DEFAULT_MTU,
        Some(v) => match v.as_u64() {
            Some(m @ 576..=65535) => m as u32,
            _ => return Err(invalid("mtu", v, "must be an integer in 576..=65535")),
        },
    };
    Ok(Conf {
        network: network.to_string(),
        pod_cidr,
        data_dir: path(custom, "dataDir", DEFAULT_DATA_DIR)?,
        bpffs: path(custom, "bpffs", DEFAULT_BPFFS)?,
        mtu,
    })
}

/// Which directions of a pod's traffic a chained `bandwidth` plugin will
/// shape, from `runtimeConfig.bandwidth` (sluice sees it when its own entry
/// in the conflist declares `"capabilities": {"bandwidth": true}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// Into the pod (a qdisc on the host veth's egress): local pod-to-pod
    /// packets must go through it instead of straight to the peer.
    pub ingress: bool,
    /// Out of the pod (the host veth's ingress qdisc slot, so no clsact).
    pub egress: bool,
}

/// Reads [`Shaping`]; rates are bits per second, 0 or absent meaning none.
/// Keys match case-insensitively, as Go's JSON decoding (the bandwidth
/// plugin's) does: containerd 1.6 sends `IngressRate`, the spec
/// `ingressRate`.
pub fn shaping(runtime: Option<&HashMap<String, Value>>) -> Result<Shaping, Error> {
    let Some(bw) = runtime.and_then(|r| r.get("bandwidth")) else {
        return Ok(Shaping::default());
    };
    let rate = |key: &str| -> Result<bool, Error> {
        let found = bw
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v);
        match found {
            None | Some(Value::Null) => Ok(false),
            Some(v) => v.as_u64().map(|r| r > 0).ok_or_else(|| {
                invalid(
                    &format!("runtimeConfig.bandwidth.{key}"),
                    v,
                    "must be a non-negative integer",
                )
            }),
        }
    };
    Ok(Shaping {
        ingress: rate("ingressRate")?,
        egress: rate("egressRate")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaping_from_runtime_config() {
        let rc = |v: Value| -> HashMap<String, Value> { serde_json::from_value(v).expect("map") };
        assert_eq!(shaping(None).expect("none"), Shaping::default());
        let both = rc(
            serde_json::json!({"bandwidth": {"ingressRate": 1000000, "ingressBurst": 1, "egressRate": 2000000}}),
        );
        assert_eq!(
            shaping(Some(&both)).expect("both"),
            Shaping {
                ingress: true,
                egress: true
            }
        );
        // containerd 1.6's spelling (Go field names).
        let go = rc(serde_json::json!({"bandwidth": {"IngressRate": 0, "EgressRate": 5}}));
        assert_eq!(
            shaping(Some(&go)).expect("go"),
            Shaping {
                ingress: false,
                egress: true
            }
        );
        let zero = rc(serde_json::json!({"bandwidth": {"ingressRate": 0}}));
        assert_eq!(shaping(Some(&zero)).expect("zero"), Shaping::default());
        let bad = rc(serde_json::json!({"bandwidth": {"egressRate": "fast"}}));
        let e = shaping(Some(&bad)).expect_err("bad rate");
        assert_eq!(u32::from(&e), 7);
        assert!(
            e.details().contains("runtimeConfig.bandwidth.egressRate"),
            "{}",
            e.details()
        );
    }

    fn conf(v: Value) -> Result<Conf, Error> {
        let m: HashMap<String, Value> = serde_json::from_value(v).expect("object");
        parse("net", &m)
    }

    fn details(e: Error) -> (u32, String) {
        (u32::from(&e), e.details().to_string())
    }

    #[test]
    fn defaults_and_gateway() {
        let c = conf(serde_json::json!({"podCIDR": "10.244.1.0/24"})).expect("valid");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            (serde_json::json!({}), "podCIDR: missing"),
            (
                serde_json::json!({"podCIDR": "10.244.1.0/33"}),
                "podCIDR: invalid value \"10.244.1.0/33\"",
            ),
            (
                serde_json::json!({"podCIDR": "10.244.1.7/24"}),
                "did you mean 10.244.1.0/24",
            ),
            (
                serde_json::json!({"podCIDR": "10.244.1.0/24", "mtu": 70000}),
                "mtu: invalid value 70000",
            ),
            (
                serde_json::json!({"podCIDR": "10.244.1.0/24", "dataDir": "rel"}),
                "dataDir: invalid value \"rel\": must be an absolute path",
            ),
        ];
        for (v, want) in cases {
            let (code, d) = details(conf(v.clone()).expect_err("invalid"));
            assert_eq!(code, 7, "{v}");
            assert!(d.contains(want), "{v}: {d}");
        }
    }
}
