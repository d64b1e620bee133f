//! The blocks of the cluster CIDR and which Node holds each (upstream's
//! cidrset, without I/O). Hands out the lowest free block, so a block a
//! deleted Node released is the next one given.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Upstream's limit (cidrset's clusterSubnetMaxDiff): at most 2^16 blocks.
const MAX_MASK_DIFF: u8 = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--cluster-cidr {0:?}: not a CIDR")]
    ClusterCidr(String),
    #[error("--node-cidr-mask-size {mask}: {reason}")]
    MaskSize { mask: u8, reason: String },
}

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::ClusterCidr(value) => crate::Error::Config {
                flag: "cluster-cidr",
                value,
                reason: "not a CIDR (e.g. 10.244.0.0/16)".into(),
            },
            ConfigError::MaskSize { mask, reason } => crate::Error::Config {
                flag: "node-cidr-mask-size",
                value: mask.to_string(),
                reason,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OccupyError {
    #[error("{0:?} is not a CIDR")]
    NotACidr(String),
    #[error("{cidr} is outside the cluster CIDR {cluster}")]
    OutOfRange { cidr: IpNet, cluster: IpNet },
    #[error("{cidr} overlaps {block}, held by Node {holder}")]
    Taken {
        cidr: IpNet,
        block: IpNet,
        holder: String,
    },
}

#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: IpNet,
    mask: u8,
    /// Block index -> the Node holding it.
    used: BTreeMap<u128, String>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

impl CidrSet {
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<Self, ConfigError> {
        let cluster: IpNet = cluster_cidr
            .trim()
            .parse()
            .map_err(|_| ConfigError::ClusterCidr(cluster_cidr.into()))?;
        let cluster = cluster.trunc();
        let bad = |reason: String| Err(ConfigError::MaskSize { mask, reason });
        if mask > cluster.max_prefix_len() {
            return bad(format!(
                "longer than an address ({} bits)",
                cluster.max_prefix_len()
            ));
        }
        if mask < cluster.prefix_len() {
            return bad(format!("shorter than the cluster CIDR {cluster}'s"));
        }
        if mask - cluster.prefix_len() > MAX_MASK_DIFF {
            return bad(format!(
                "would cut {cluster} into more than 2^{MAX_MASK_DIFF} blocks"
            ));
        }
        Ok(Self {
            cluster,
            mask,
            used: BTreeMap::new(),
        })
    }

    pub fn cluster(&self) -> IpNet {
        self.cluster
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many blocks the cluster CIDR holds.
    pub fn capacity(&self) -> u128 {
        1u128 << (self.mask - self.cluster.prefix_len())
    }

    fn shift(&self) -> u32 {
        u32::from(self.cluster.max_prefix_len() - self.mask)
    }

    fn block(&self, index: u128) -> IpNet {
        let base = to_u128(self.cluster.network()) + (index << self.shift());
        let ip = match self.cluster {
            IpNet::V4(_) => IpAddr::V4((base as u32).into()),
            IpNet::V6(_) => IpAddr::V6(base.into()),
        };
        IpNet::new(ip, self.mask).expect("mask checked at construction")
    }

    /// The block indexes `cidr` covers, if it lies within the cluster CIDR.
    fn indexes(&self, cidr: &IpNet) -> Result<std::ops::RangeInclusive<u128>, OccupyError> {
        let cidr = cidr.trunc();
        if !self.cluster.contains(&cidr) && !cidr.contains(&self.cluster) {
            return Err(OccupyError::OutOfRange {
                cidr,
                cluster: self.cluster,
            });
        }
        let base = to_u128(self.cluster.network());
        let first = to_u128(cidr.network()).max(base);
        let last = to_u128(cidr.broadcast()).min(to_u128(self.cluster.broadcast()));
        Ok(((first - base) >> self.shift())..=((last - base) >> self.shift()))
    }

    /// The blocks `node` holds.
    pub fn held_by(&self, node: &str) -> Vec<IpNet> {
        self.used
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(i, _)| self.block(*i))
            .collect()
    }

    /// Records what the Node object says it holds (its spec.podCIDRs),
    /// dropping any other block this set had for it. A block another Node
    /// holds stays that Node's.
    pub fn set_node(&mut self, node: &str, cidrs: &[String]) -> Vec<OccupyError> {
        let mut errors = Vec::new();
        let mut keep = Vec::new();
        for raw in cidrs {
            let Ok(cidr) = raw.trim().parse::<IpNet>() else {
                errors.push(OccupyError::NotACidr(raw.clone()));
                continue;
            };
            if std::mem::discriminant(&cidr) != std::mem::discriminant(&self.cluster) {
                // The other family of a dual-stack Node: not ours.
                continue;
            }
            match self.indexes(&cidr) {
                Ok(range) => {
                    for i in range {
                        match self.used.get(&i) {
                            Some(holder) if holder != node => errors.push(OccupyError::Taken {
                                cidr,
                                block: self.block(i),
                                holder: holder.clone(),
                            }),
                            _ => keep.push(i),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        self.used.retain(|i, n| n != node || keep.contains(i));
        for i in keep {
            self.used.insert(i, node.to_string());
        }
        errors
    }

    /// The lowest free block, now held by `node`; the one it already holds
    /// if any; None when every block is taken.
    pub fn allocate(&mut self, node: &str) -> Option<IpNet> {
        if let Some(held) = self.held_by(node).into_iter().next() {
            return Some(held);
        }
        let mut free = 0u128;
        for used in self.used.keys() {
            if *used != free {
                break;
            }
            free += 1;
        }
        if free >= self.capacity() {
            return None;
        }
        self.used.insert(free, node.to_string());
        Some(self.block(free))
    }

    /// Frees every block `node` holds; true if there was any.
    pub fn release(&mut self, node: &str) -> bool {
        let before = self.used.len();
        self.used.retain(|_, n| n != node);
        self.used.len() != before
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidr: &str, mask: u8) -> CidrSet {
        CidrSet::new(cidr, mask).expect("valid config")
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn blocks_are_handed_out_lowest_first() {
        let mut c = set("10.244.0.0/16", 24);
        assert_eq!(c.allocate("a").unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(c.allocate("b").unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(c.allocate("c").unwrap().to_string(), "10.244.2.0/24");
    }

    #[test]
    fn a_node_asking_again_gets_the_block_it_holds() {
        let mut c = set("10.244.0.0/16", 24);
        let first = c.allocate("a");
        c.allocate("b");
        assert_eq!(c.allocate("a"), first);
        assert_eq!(c.held_by("a").len(), 1);
    }

    #[test]
    fn a_released_block_is_the_next_one_given() {
        let mut c = set("10.244.0.0/16", 24);
        for n in ["a", "b", "c"] {
            c.allocate(n);
        }
        assert!(c.release("b"));
        assert!(!c.release("b"), "nothing left to release");
        assert_eq!(c.allocate("d").unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(c.allocate("e").unwrap().to_string(), "10.244.3.0/24");
    }

    #[test]
    fn a_full_range_gives_nothing_until_a_block_is_released() {
        let mut c = set("10.0.0.0/30", 31);
        assert_eq!(c.capacity(), 2);
        assert_eq!(c.allocate("a").unwrap().to_string(), "10.0.0.0/31");
        assert_eq!(c.allocate("b").unwrap().to_string(), "10.0.0.2/31");
        assert_eq!(c.allocate("c"), None);
        assert!(c.held_by("c").is_empty());
        c.release("a");
        assert_eq!(c.allocate("c").unwrap().to_string(), "10.0.0.0/31");
    }

    #[test]
    fn blocks_occupied_at_start_are_never_handed_out_again() {
        let mut c = set("10.244.0.0/16", 24);
        assert!(c.set_node("old-1", &s(&["10.244.0.0/24"])).is_empty());
        assert!(c.set_node("old-2", &s(&["10.244.2.0/24"])).is_empty());
        assert_eq!(c.allocate("new-1").unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(c.allocate("new-2").unwrap().to_string(), "10.244.3.0/24");
    }

    #[test]
    fn the_node_s_own_cidr_replaces_a_block_reserved_for_it() {
        let mut c = set("10.244.0.0/16", 24);
        c.allocate("a");
        assert!(c.set_node("a", &s(&["10.244.7.0/24"])).is_empty());
        assert_eq!(c.held_by("a"), ["10.244.7.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(c.allocate("b").unwrap().to_string(), "10.244.0.0/24");
    }

    #[test]
    fn a_block_held_by_another_node_stays_its_own() {
        let mut c = set("10.244.0.0/16", 24);
        c.set_node("a", &s(&["10.244.0.0/24"]));
        let errs = c.set_node("b", &s(&["10.244.0.0/24"]));
        assert!(matches!(&errs[..], [OccupyError::Taken { holder, .. }] if holder == "a"));
        assert!(c.held_by("b").is_empty());
        c.release("b");
        assert_eq!(c.held_by("a").len(), 1);
    }

    #[test]
    fn cidrs_outside_the_range_or_unparsable_are_reported_and_ignored() {
        let mut c = set("10.244.0.0/16", 24);
        let errs = c.set_node("a", &s(&["192.168.0.0/24", "garbage"]));
        assert!(matches!(errs[0], OccupyError::OutOfRange { .. }));
        assert!(matches!(errs[1], OccupyError::NotACidr(_)));
        assert!(c.held_by("a").is_empty());
        assert!(
            c.set_node("a", &s(&["fd00::/64"])).is_empty(),
            "another family is not ours"
        );
    }

    #[test]
    fn a_wider_cidr_occupies_every_block_it_covers() {
        let mut c = set("10.244.0.0/16", 24);
        c.set_node("big", &s(&["10.244.0.0/23"]));
        assert_eq!(c.held_by("big").len(), 2);
        assert_eq!(c.allocate("a").unwrap().to_string(), "10.244.2.0/24");
    }

    #[test]
    fn ipv6_ranges_work_the_same() {
        let mut c = set("fd00:10::/56", 64);
        assert_eq!(c.allocate("a").unwrap().to_string(), "fd00:10::/64");
        assert_eq!(c.allocate("b").unwrap().to_string(), "fd00:10:0:1::/64");
    }

    #[test]
    fn the_cluster_cidr_is_normalised() {
        let mut c = set("10.244.3.7/16", 24);
        assert_eq!(c.cluster().to_string(), "10.244.0.0/16");
        assert_eq!(c.allocate("a").unwrap().to_string(), "10.244.0.0/24");
    }

    #[test]
    fn invalid_configs_name_the_flag() {
        let err = |cidr: &str, mask: u8| {
            crate::Error::from(CidrSet::new(cidr, mask).unwrap_err()).to_string()
        };
        assert!(
            err("10.244.0.0", 24).starts_with("--cluster-cidr \"10.244.0.0\""),
            "{}",
            err("10.244.0.0", 24)
        );
        assert!(err("not-a-cidr", 24).starts_with("--cluster-cidr"));
        assert!(err("10.244.0.0/16", 8).starts_with("--node-cidr-mask-size \"8\""));
        assert!(err("10.244.0.0/16", 33).starts_with("--node-cidr-mask-size"));
        assert!(
            err("10.0.0.0/8", 25).starts_with("--node-cidr-mask-size"),
            "2^17 blocks"
        );
        assert!(CidrSet::new("10.0.0.0/8", 24).is_ok(), "2^16 blocks");
    }
}
