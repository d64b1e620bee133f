//! Nodes (core/v1): a kubelet registers its node with the status it
//! observed, so a create keeps the status (upstream's node strategy does
//! not reset it either).
use serde_json::Value;

use super::Strategy;
use crate::registry::Resource;

pub struct Node;

pub static NODE: Node = Node;

impl Strategy for Node {
    fn prepare_create(&self, _r: &Resource, _obj: &mut Value) {}
}
