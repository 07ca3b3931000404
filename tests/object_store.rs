//! Reading events from object storage: a real S3-compatible server (moto, started here) holds
//! the Lake Loader partitions and a flat CSV; a run over `s3://` gives the same scores as the
//! same files on local disk, prunes partitions the same way, and never prints the secret.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// Starts moto's S3 server on an ephemeral port, creates `bucket`, uploads every file under
/// `src` (keys relative to it), prints "PORT n" and serves until its stdin closes.
const MOTO: &str = r#"
import os, sys, boto3
from moto.server import ThreadedMotoServer
bucket, src = sys.argv[1], sys.argv[2]
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
port = server.get_host_and_port()[1]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=bucket)
for root, _, files in os.walk(src):
    for f in files:
        path = os.path.join(root, f)
        s3.upload_file(path, bucket, os.path.relpath(path, src).replace(os.sep, "/"))
print("PORT", port, flush=True)
sys.stdin.read()
server.stop()
"#;

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(python: &Path, bucket: &str, src: &Path) -> Moto {
        let mut child = Command::new(python)
            .args(["-c", MOTO, bucket, src.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python with moto and boto3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("moto did not start: {line:?}"))
            .parse()
            .unwrap();
        Moto { child, port }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "s3cr3t-that-must-never-be-logged";

fn propel_s3(cwd: &Path, port: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_propel"))
        .args(args)
        .current_dir(cwd)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .expect("run propel")
}

#[test]
fn a_run_over_s3_equals_the_same_run_on_local_disk() {
    let Some(python) = python_from("PROPEL_MOTO_PYTHON") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let bucket_dir = tmp.path().join("bucket");
    let events = small_events(&bucket_dir);
    std::fs::create_dir_all(bucket_dir.join("crm")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples/store_sales.csv"),
        bucket_dir.join("crm/store_sales.csv"),
    )
    .unwrap();
    let moto = Moto::start(&python, "shop-events", &bucket_dir);
    let job = quick_job(tmp.path());
    let run = |input: &str, flat: &str, out: &str, as_of: &str| {
        let out = tmp.path().join(out);
        let o = propel_s3(
            tmp.path(),
            moto.port,
            &[
                "--log-format",
                "json",
                "run",
                "--job",
                job.to_str().unwrap(),
                "--input",
                input,
                "--flat-input",
                flat,
                "--output",
                out.to_str().unwrap(),
                "--as-of",
                as_of,
            ],
        );
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        assert!(o.status.success(), "{text}");
        assert!(!text.contains(SECRET), "the secret key was printed");
        out.join(as_of)
    };
    let local_flat = bucket_dir.join("crm/store_sales.csv");
    let local = run(
        events.to_str().unwrap(),
        local_flat.to_str().unwrap(),
        "local",
        "2026-05-15",
    );
    let remote = run(
        "s3://shop-events/events/",
        "s3://shop-events/crm/store_sales.csv",
        "remote",
        "2026-05-15",
    );
    for file in ["scores.parquet", "features.parquet", "identity.parquet"] {
        assert_eq!(
            std::fs::read(local.join(file)).unwrap(),
            std::fs::read(remote.join(file)).unwrap(),
            "{file} differs between s3:// and local disk"
        );
    }
    let ingest = |run: &Path| {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap())
                .unwrap();
        m["ingest"].clone()
    };
    assert_eq!(ingest(&local), ingest(&remote));
    assert!(
        ingest(&remote)["files_pruned"].as_u64().unwrap() > 0,
        "later partitions are not read"
    );

    // `validate` reads the schemas on the server; a missing prefix is a clear input error.
    let o = propel_s3(
        tmp.path(),
        moto.port,
        &["validate", "--input", "s3://shop-events/events/"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("input ok: 80 file(s)"));
    let o = propel_s3(
        tmp.path(),
        moto.port,
        &["run", "--input", "s3://shop-events/nothing-here/"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("s3://shop-events/nothing-here/"),
        "{}",
        stderr(&o)
    );
}
