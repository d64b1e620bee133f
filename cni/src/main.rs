//! `sluice-cni`: the CNI plugin. Not implemented yet (its own issue); until
//! then it answers every invocation with a CNI error result, so a runtime that
//! calls it fails loudly instead of believing a pod got a network.
fn main() -> std::process::ExitCode {
    // CNI spec error shape; code 100+ is plugin-specific.
    println!(
        r#"{{"cniVersion":"1.1.0","code":100,"msg":"sluice-cni is not implemented yet","details":""}}"#
    );
    std::process::ExitCode::FAILURE
}
