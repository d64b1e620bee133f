//! Which API failures a controller treats as an answer rather than an
//! error (upstream's apierrors.IsNotFound and friends).

fn response(e: &kube::Error) -> Option<&kube::core::ErrorResponse> {
    match e {
        kube::Error::Api(r) => Some(r),
        _ => None,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    response(e).is_some_and(|r| r.code == 404)
}

pub fn is_already_exists(e: &kube::Error) -> bool {
    response(e).is_some_and(|r| r.code == 409 && r.reason == "AlreadyExists")
}

/// Creating in a namespace being deleted is refused, and keeps being
/// refused: controllers drop the work instead of retrying it.
pub fn is_namespace_terminating(e: &kube::Error) -> bool {
    response(e)
        .is_some_and(|r| (r.code == 403 || r.code == 409) && r.message.contains("being terminated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(kube::core::ErrorResponse {
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            code,
        })
    }

    #[test]
    fn answers_are_told_apart_by_code_and_reason() {
        assert!(is_not_found(&api(404, "NotFound", "")));
        assert!(!is_not_found(&api(409, "Conflict", "")));
        assert!(is_already_exists(&api(409, "AlreadyExists", "")));
        assert!(
            !is_already_exists(&api(409, "Conflict", "")),
            "a stale write is no answer"
        );
        assert!(is_namespace_terminating(&api(
            403,
            "Forbidden",
            "unable to create new content in namespace ns because it is being terminated"
        )));
        assert!(!is_namespace_terminating(&api(
            403,
            "Forbidden",
            "RBAC says no"
        )));
    }
}
