//! EndpointSlices (discovery.k8s.io/v1): the address type, endpoints
//! with addresses, and their ports.
use serde_json::Value;

use super::{
    Causes, Strategy,
    fields::{port_range, protocol, required},
};
use crate::registry::table::{Column, or_none, s};

pub struct EndpointSlice;

pub static ENDPOINT_SLICE: EndpointSlice = EndpointSlice;

impl Strategy for EndpointSlice {
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Causes {
        let mut c = Causes::new();
        validate_endpoint_slice(obj, &mut c);
        c
    }

    fn extra_columns(&self) -> Vec<Column> {
        vec![
            Column {
                name: "AddressType",
                priority: 0,
                cell: |o| Value::from(s(&o["addressType"])),
            },
            Column {
                name: "Ports",
                priority: 0,
                cell: |o| {
                    or_none(
                        o["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| s(&p["port"]))
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                },
            },
            Column {
                name: "Endpoints",
                priority: 0,
                cell: |o| {
                    or_none(
                        o["endpoints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                            .map(|a| s(&a))
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                },
            },
        ]
    }
}

fn validate_endpoint_slice(obj: &Value, c: &mut Causes) {
    match obj["addressType"].as_str() {
        Some("IPv4" | "IPv6" | "FQDN") => {}
        Some(t) => c.push((
            "addressType".into(),
            format!("Unsupported value: {t:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        )),
        None => required(c, "addressType"),
    }
    for (i, e) in obj["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if e["addresses"].as_array().is_none_or(|a| a.is_empty()) {
            required(c, &format!("endpoints[{i}].addresses"));
        }
    }
    for (i, p) in obj["ports"].as_array().into_iter().flatten().enumerate() {
        if !p["port"].is_null() {
            port_range(c, format!("ports[{i}].port"), &p["port"], 1);
        }
        protocol(c, format!("ports[{i}].protocol"), &p["protocol"]);
    }
}
