//! The data scientists' notebooks run top to bottom on the demo's output (two nights, so that
//! the drift section has a previous run) and draw their figures.

mod common;

use common::*;

#[test]
fn the_notebooks_run_on_the_demo_output() {
    let Some(python) = python_from("PROPEL_NOTEBOOK_PYTHON") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The embedded demo, exactly as the README's first command runs it, then the night before
    // it into the same output (from the demo's own events).
    let o = propel(tmp.path(), &["run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp.path().join("propel-demo/out");
    let night = run_dir(&out);
    let as_of: chrono::NaiveDate = night
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let before = (as_of - chrono::Duration::days(7)).to_string();
    let previous = tmp.path().join("previous");
    let o = propel(
        tmp.path(),
        &[
            "run",
            "--input",
            "propel-demo/events",
            "--output",
            previous.to_str().unwrap(),
            "--as-of",
            &before,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let executed = tmp.path().join("executed");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new(python)
        .arg(repo.join("notebooks/execute.py"))
        .args(["--run", night.to_str().unwrap()])
        .args(["--previous", previous.join(&before).to_str().unwrap()])
        .args(["--out", executed.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("notebooks: 3 passed, 0 failed"),
        "{text}\n{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&executed).unwrap().count(), 3);
}
