use std::collections::HashMap;

use prost::Message as _;
use prost_reflect::{DynamicMessage, MapKey, Value};
use serde_json::{Value as Json, json};

use super::*;

fn desc(name: &str) -> MessageDescriptor {
    pool()
        .ok()
        .and_then(|p| p.get_message_by_name(name))
        .unwrap_or_else(|| panic!("{name} is not in the pool"))
}

/// A message of `name` with these fields set (present on the wire, as Go
/// writes them, zero or not).
fn msg(name: &str, fields: Vec<(&str, Value)>) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc(name));
    for (f, v) in fields {
        m.set_field_by_name(f, v);
    }
    m
}

fn m(name: &str, fields: Vec<(&str, Value)>) -> Value {
    Value::Message(msg(name, fields))
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn string_map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (MapKey::String((*k).into()), v.clone()))
            .collect::<HashMap<_, _>>(),
    )
}

/// Upstream's wire form: the magic, then a runtime.Unknown.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let unknown = msg(
        UNKNOWN,
        vec![
            (
                "typeMeta",
                m(
                    "k8s.io.apimachinery.pkg.runtime.TypeMeta",
                    vec![("apiVersion", s(api_version)), ("kind", s(kind))],
                ),
            ),
            ("raw", Value::Bytes(raw.to_vec().into())),
            ("contentEncoding", s("")),
            ("contentType", s("")),
        ],
    );
    [MAGIC, unknown.encode_to_vec().as_slice()].concat()
}

fn decode(api_version: &str, kind: &str, object: DynamicMessage) -> Json {
    to_json(&envelope(api_version, kind, &object.encode_to_vec()))
        .unwrap_or_else(|e| panic!("decoding: {e}"))
}

const CORE: &str = "k8s.io.api.core.v1";
const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

fn service_port(target: Value) -> Json {
    let svc = msg(
        &format!("{CORE}.Service"),
        vec![(
            "spec",
            m(
                &format!("{CORE}.ServiceSpec"),
                vec![(
                    "ports",
                    Value::List(vec![m(
                        &format!("{CORE}.ServicePort"),
                        vec![("port", Value::I32(80)), ("targetPort", target)],
                    )]),
                )],
            ),
        )],
    );
    decode("v1", "Service", svc)["spec"]["ports"][0].clone()
}

fn int_or_string(kind: i64, int: i32, string: &str) -> Value {
    m(
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
        vec![
            ("type", Value::I64(kind)),
            ("intVal", Value::I32(int)),
            ("strVal", s(string)),
        ],
    )
}

#[test]
fn int_or_string_of_type_int_is_a_number() {
    assert_eq!(
        service_port(int_or_string(0, 8080, "")),
        json!({"port": 80, "targetPort": 8080})
    );
}

#[test]
fn int_or_string_of_type_string_is_a_string() {
    assert_eq!(
        service_port(int_or_string(1, 0, "http")),
        json!({"port": 80, "targetPort": "http"})
    );
}

#[test]
fn quantity_is_its_string() {
    let res = msg(
        &format!("{CORE}.ResourceRequirements"),
        vec![(
            "limits",
            string_map(&[(
                "cpu",
                m(
                    "k8s.io.apimachinery.pkg.api.resource.Quantity",
                    vec![("string", s("500m"))],
                ),
            )]),
        )],
    );
    assert_eq!(message(&res), Ok(Some(json!({"limits": {"cpu": "500m"}}))));
}

fn meta(fields: Vec<(&str, Value)>) -> Json {
    let ns = msg(
        &format!("{CORE}.Namespace"),
        vec![("metadata", m(&format!("{META}.ObjectMeta"), fields))],
    );
    decode("v1", "Namespace", ns)["metadata"].clone()
}

fn timestamp(name: &str, seconds: i64, nanos: i32) -> Value {
    m(
        &format!("{META}.{name}"),
        vec![
            ("seconds", Value::I64(seconds)),
            ("nanos", Value::I32(nanos)),
        ],
    )
}

#[test]
fn time_is_rfc3339_in_whole_seconds() {
    let got = meta(vec![(
        "creationTimestamp",
        timestamp("Time", 1_700_000_000, 999_000_000),
    )]);
    assert_eq!(got, json!({"creationTimestamp": "2023-11-14T22:13:20Z"}));
}

#[test]
fn zero_time_is_left_out() {
    let zero = m(&format!("{META}.Time"), vec![]);
    assert_eq!(meta(vec![("creationTimestamp", zero)]), json!({}));
}

#[test]
fn micro_time_is_rfc3339_in_microseconds() {
    let ev = msg(
        "k8s.io.api.events.v1.Event",
        vec![(
            "eventTime",
            timestamp("MicroTime", 1_700_000_000, 123_456_789),
        )],
    );
    assert_eq!(
        decode("events.k8s.io/v1", "Event", ev)["eventTime"],
        json!("2023-11-14T22:13:20.123456Z")
    );
}

#[test]
fn duration_is_go_duration_string() {
    let d = msg(
        &format!("{META}.Duration"),
        vec![("duration", Value::I64(5_400_000_000_000))],
    );
    assert_eq!(message(&d), Ok(Some(json!("1h30m0s"))));
}

#[test]
fn go_duration_spells_like_go() {
    for (ns, want) in [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (2_250_000, "2.25ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (9_900_500_000_000, "2h45m0.5s"),
        (-1_000_000_000, "-1s"),
    ] {
        assert_eq!(go_duration(ns), want, "{ns}ns");
    }
}

fn revision_data(raw: &[u8]) -> Json {
    let rev = msg(
        "k8s.io.api.apps.v1.ControllerRevision",
        vec![
            (
                "data",
                m(
                    "k8s.io.apimachinery.pkg.runtime.RawExtension",
                    vec![("raw", Value::Bytes(raw.to_vec().into()))],
                ),
            ),
            ("revision", Value::I64(3)),
        ],
    );
    decode("apps/v1", "ControllerRevision", rev)
}

#[test]
fn raw_extension_is_the_embedded_json() {
    let got = revision_data(br#"{"spec":{"replicas":2}}"#);
    assert_eq!(got["data"], json!({"spec": {"replicas": 2}}));
}

#[test]
fn raw_extension_may_embed_a_protobuf_object() {
    let cm = msg(
        &format!("{CORE}.ConfigMap"),
        vec![("data", string_map(&[("a", s("b"))]))],
    );
    let got = revision_data(&envelope("v1", "ConfigMap", &cm.encode_to_vec()));
    assert_eq!(
        got["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}})
    );
}

#[test]
fn int64_is_a_json_number() {
    assert_eq!(revision_data(b"")["revision"], json!(3));
    assert_eq!(
        meta(vec![("generation", Value::I64(7))]),
        json!({"generation": 7})
    );
}

#[test]
fn bytes_are_base64_and_empty_map_values_kept() {
    let secret = msg(
        &format!("{CORE}.Secret"),
        vec![(
            "data",
            string_map(&[
                ("k", Value::Bytes(b"v".to_vec().into())),
                ("e", Value::Bytes(Vec::new().into())),
            ]),
        )],
    );
    assert_eq!(
        decode("v1", "Secret", secret)["data"],
        json!({"k": "dg==", "e": ""})
    );
}

#[test]
fn a_pointers_zero_is_kept_a_non_pointers_left_out() {
    let spec = msg(
        "k8s.io.api.apps.v1.DeploymentSpec",
        vec![
            ("replicas", Value::I32(0)),
            ("minReadySeconds", Value::I32(0)),
            ("paused", Value::Bool(false)),
        ],
    );
    assert_eq!(message(&spec), Ok(Some(json!({"replicas": 0}))));
}

#[test]
fn empty_strings_are_unset_and_repeated_fields_are_arrays() {
    let c = msg(
        &format!("{CORE}.Container"),
        vec![
            ("name", s("c")),
            ("imagePullPolicy", s("")),
            ("args", Value::List(vec![s("a"), s("")])),
        ],
    );
    assert_eq!(
        message(&c),
        Ok(Some(json!({"name": "c", "args": ["a", ""]})))
    );
}

#[test]
fn delete_options_are_found_in_any_group_version() {
    let opts = msg(
        &format!("{META}.DeleteOptions"),
        vec![("gracePeriodSeconds", Value::I64(0))],
    );
    assert_eq!(
        decode("apps/v1", "DeleteOptions", opts),
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
    );
}

#[test]
fn a_body_without_the_prefix_is_refused() {
    assert_eq!(to_json(b"{\"kind\":\"Pod\"}"), Err(ProtobufError::NoMagic));
}

#[test]
fn a_malformed_envelope_is_refused() {
    assert!(matches!(
        to_json(b"k8s\0\x0a\xff\xff"),
        Err(ProtobufError::Envelope(_))
    ));
}

#[test]
fn a_malformed_object_is_refused_naming_its_kind() {
    let got = to_json(&envelope("v1", "Pod", b"\x0a\xff\xff"));
    assert!(
        matches!(&got, Err(ProtobufError::Object { kind, .. }) if kind == "Pod"),
        "{got:?}"
    );
}

#[test]
fn an_unknown_kind_is_refused() {
    assert_eq!(
        to_json(&envelope("apps/v1", "Gadget", b"")),
        Err(ProtobufError::UnknownKind {
            api_version: "apps/v1".into(),
            kind: "Gadget".into()
        })
    );
    assert!(matches!(
        to_json(&envelope("example.com/v1", "Deployment", b"")),
        Err(ProtobufError::UnknownKind { .. })
    ));
}

#[test]
fn a_missing_kind_is_refused() {
    assert_eq!(
        to_json(&envelope("v1", "", b"")),
        Err(ProtobufError::MissingTypeMeta("kind"))
    );
}

/// Drops the nulls Go writes for a zero `Time` (the walker leaves the
/// field out, which reads the same).
fn without_nulls(v: Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.into_iter().map(without_nulls).collect()),
        v => v,
    }
}

/// kubectl 1.33's protobuf body for a `kubectl create ...` reads as the
/// JSON kubectl writes for the same command with `--dry-run=client -o json`.
fn same_as_kubectls_json(pb: &[u8], kubectl_json: &str) {
    let want: Json = serde_json::from_str(kubectl_json).unwrap_or_else(|e| panic!("{e}"));
    let got = to_json(pb).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, without_nulls(want));
}

#[test]
fn kubectl_create_namespace() {
    same_as_kubectls_json(
        include_bytes!("testdata/namespace.pb"),
        include_str!("testdata/namespace.json"),
    );
}

#[test]
fn kubectl_create_deployment() {
    same_as_kubectls_json(
        include_bytes!("testdata/deployment.pb"),
        include_str!("testdata/deployment.json"),
    );
}

#[test]
fn kubectl_create_configmap() {
    same_as_kubectls_json(
        include_bytes!("testdata/configmap.pb"),
        include_str!("testdata/configmap.json"),
    );
}

#[test]
fn kubectl_create_secret() {
    same_as_kubectls_json(
        include_bytes!("testdata/secret.pb"),
        include_str!("testdata/secret.json"),
    );
}

#[test]
fn kubectl_create_service() {
    same_as_kubectls_json(
        include_bytes!("testdata/service.pb"),
        include_str!("testdata/service.json"),
    );
}

#[test]
fn kubectl_create_job() {
    same_as_kubectls_json(
        include_bytes!("testdata/job.pb"),
        include_str!("testdata/job.json"),
    );
}
