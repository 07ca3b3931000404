//! The `propel` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use propel::cli::{Cli, LogFormat, execute};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

// polars frees many small column chunks (a file's row groups) while it builds large columns
// in their place (filtering, sorting): glibc's allocator kept the freed chunks resident, close
// to a second copy of the events. mimalloc returns them: at 1M events the peak was 2.2 GiB
// with glibc's allocator and 1.3-1.5 GiB with mimalloc. It returns freed pages after three
// seconds (`MIMALLOC_PURGE_DELAY` overrides): purging them at once made every reuse fault the
// pages in again, and the kernel's time for that was most of a run's system time (10M events
// over 180 days: a full read 140 s with 15.6 million page faults at once, 121 s with 1.6
// million after a second, peaking at 16.3 GB instead of 14.3 GB; a night read incrementally
// about 19 s against 14-18 s). After three seconds rather than one, the night read
// incrementally took 6.07-6.10 s against 6.31-6.35 s (1.0 million page faults against 1.25
// million) at a peak of 3.4 GB against 3.2 GB; its full refresh 42.4 s against 42.8 s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (not exported by libmimalloc-sys).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // Safety: sets a process-wide allocator option before any thread is started.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 3000) };
    }
    // No transparent huge pages for this process (what `MIMALLOC_ALLOW_THP=0` does, which
    // overrides): a fault on fresh memory then zeroes a 4 KiB page, not a 2 MiB one the kernel
    // may first have to compact memory for. Reading a 76 MB Parquet file into fresh memory took
    // 0.36-0.38 s in eight runs without them, and 0.25 s to 4.6 s with them; the 10M-event
    // night read incrementally took 20-29 s against 36 s, at the same peak.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Safety: a prctl on this process with constant arguments; it fails harmlessly
        // (returns -1) on kernels without the option.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    let cli = Cli::parse();
    // Schedulers get every stage as a JSON line; a person (or cron's mail) gets warnings,
    // progress bars on a terminal, and the one-screen summary. PROPEL_LOG overrides.
    let default_level = match cli.log_format {
        LogFormat::Json => "info",
        LogFormat::Text => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROPEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    match cli.log_format {
        // One JSON object per line on stderr, for schedulers; no progress bars.
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        // Human-readable lines, with progress bars for the stages when stderr is a terminal
        // (indicatif hides them otherwise, e.g. under cron).
        LogFormat::Text => {
            let bars = tracing_indicatif::IndicatifLayer::new();
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .compact()
                        .with_writer(bars.get_stderr_writer()),
                )
                .with(bars)
                .init()
        }
    }
    if let Err(err) = execute(cli) {
        let text = err.to_string();
        eprintln!("error: {text}");
        std::process::exit(err.exit_code());
    }
}
