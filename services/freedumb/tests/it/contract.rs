//! The OpenAPI document is the contract a generated client relies on:
//! schemathesis (from PyPI, pinned in `.ci/run`) generates requests from it
//! against a platform this test starts, signed in, and checks every answer.
//!
//! Checks on: no server error; every status, content type, header and body
//! as the document says; and every request the document allows is accepted
//! (`positive_data_acceptance`), except the false positives listed with
//! their reasons in `tests/contract_hooks.py`: rules on stored state or on
//! several fields at once, which JSON Schema cannot state.

use std::process::Stdio;

use crate::helpers::spawn_app;

/// What schemathesis checks. `negative_data_rejection` is left out: the
/// server is deliberately lenient in places the document is strict (it
/// trims white space around names and codes).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,positive_data_acceptance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_disagreement_between_the_document_and_the_server() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let examples = std::env::var("CONTRACT_MAX_EXAMPLES").unwrap_or_else(|_| "25".to_owned());
    // schemathesis keeps a cache of past failures in its working directory
    // and replays them first; a directory of this run's own keeps every run
    // the same for the same seed.
    let workdir = std::env::temp_dir().join(format!("freedumb-contract-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir).expect("a working directory");
    let mut command = std::process::Command::new("schemathesis");
    command.current_dir(&workdir);
    command
        .args(["run", &app.url("/openapi.json"), "--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {}", user.access_token)])
        .args(["--max-examples", &examples, "--seed", "20261203", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--suppress-health-check", "too_slow,filter_too_much"])
        .env("SCHEMATHESIS_HOOKS", "contract_hooks")
        // The hooks module sits beside this crate's tests.
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
        .stdin(Stdio::null());
    // The platform serves on this runtime's other thread meanwhile.
    let run = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the schemathesis task")
        .unwrap_or_else(|err| {
            panic!("schemathesis could not be started ({err}); `.ci/run` installs it: pip install schemathesis==4.32.5")
        });
    let _ = std::fs::remove_dir_all(&workdir);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "schemathesis found disagreements:\n{stdout}\n{stderr}");
}
