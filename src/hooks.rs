//! Runs `exec` lines: argv as given (macros filled in, no shell), as the
//! configured user, with its environment and working directory; output to
//! the log line by line; exit status checked against `ec`. A line that runs
//! past its timeout, or past the deadline of the event, gets SIGTERM, then
//! SIGKILL after a grace period; so does every line when the daemon is asked
//! to hurry (a second signal).

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Event, ExecBlock, ExecLine, MacroValues};

/// Between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// A line started after the event's deadline still gets this long.
pub const MIN_SLICE: Duration = Duration::from_secs(2);
/// Why a line cut at the event's deadline was cut.
const DEADLINE_REASON: &str = "the event's deadline";
/// How long output is still forwarded after a hook exits.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// What to do after a line fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Bring-up: the first failure ends the run.
    Stop,
    /// Shutdown: every line still gets its chance; failures are collected.
    Continue,
}

/// How a run of hooks is bounded.
#[derive(Debug, Clone)]
pub struct Policy {
    pub on_failure: OnFailure,
    /// The lines share the time until this instant (the notice's deadline
    /// less the reserve); a line that would overrun it is cut.
    pub deadline: Option<Instant>,
    /// Cancelled when the daemon is asked to hurry: running lines get SIGTERM.
    pub hurry: CancellationToken,
}

impl Policy {
    pub fn new(on_failure: OnFailure) -> Policy {
        Policy {
            on_failure,
            deadline: None,
            hurry: CancellationToken::new(),
        }
    }
}

/// Where hooks run: which domain and event, for log lines and errors.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub domain: &'a str,
    pub event: Event,
}

/// What became of one line.
#[derive(Debug, Clone)]
pub struct LineReport {
    pub argv: Vec<String>,
    pub took: Duration,
    /// `None` on success, else why it failed.
    pub failure: Option<String>,
    /// It was cut because the event's deadline left no more time.
    pub over_deadline: bool,
}

/// Runs the lines of `blocks`, in order; the caller picks the blocks bound
/// to `scope.event`.
pub async fn run(
    blocks: Vec<&ExecBlock>,
    scope: Scope<'_>,
    values: &MacroValues,
    policy: &Policy,
) -> Result<(), Vec<String>> {
    let failures: Vec<String> = run_reported(blocks, scope, values, policy)
        .await
        .into_iter()
        .filter_map(|r| r.failure)
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// As [`run`], with a report of every line that ran.
pub async fn run_reported(
    blocks: Vec<&ExecBlock>,
    scope: Scope<'_>,
    values: &MacroValues,
    policy: &Policy,
) -> Vec<LineReport> {
    let mut reports = Vec::new();
    for block in blocks {
        for line in &block.lines {
            let started = Instant::now();
            let argv: Vec<String> = line.argv.iter().map(|t| t.render(values)).collect();
            let failure = run_line(line, &argv, scope, values, policy).await.err();
            if let Some(e) = &failure {
                tracing::error!("[{}] {}: {e}", scope.domain, scope.event);
            }
            let stop = failure.is_some() && policy.on_failure == OnFailure::Stop;
            let over_deadline = failure
                .as_deref()
                .is_some_and(|f| f.ends_with(&format!("({DEADLINE_REASON})")));
            reports.push(LineReport {
                argv,
                took: started.elapsed(),
                failure,
                over_deadline,
            });
            if stop {
                return reports;
            }
        }
    }
    reports
}

/// How long this line may run, and why that long.
fn time_limit(line: &ExecLine, policy: &Policy) -> Option<(Duration, &'static str)> {
    let own = line.timeout.map(|t| (t, "its timeout"));
    // SIGTERM comes early enough for the grace period to end by the deadline.
    let left = policy.deadline.map(|d| {
        (
            d.saturating_duration_since(Instant::now())
                .saturating_sub(GRACE)
                .max(MIN_SLICE),
            DEADLINE_REASON,
        )
    });
    match (own, left) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

async fn run_line(
    line: &ExecLine,
    argv: &[String],
    scope: Scope<'_>,
    values: &MacroValues,
    policy: &Policy,
) -> Result<(), String> {
    let program = &argv[0];
    tracing::info!("[{}] {}: running {:?}", scope.domain, scope.event, argv);
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        // The daemon's own line to systemd is not the hook's to use.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(line.env.iter().map(|(k, v)| (k, v.render(values))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a cut reaches what it started too.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &line.cwd {
        cmd.current_dir(dir);
    }
    if line.user.is_some() || line.group.is_some() {
        let (user, group) = (line.user.clone(), line.group.clone());
        let ids = tokio::task::spawn_blocking(move || identity(user.as_deref(), group.as_deref()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("hook {argv:?}: {e}"))?;
        if let Some((uid, home, name)) = ids.user {
            cmd.uid(uid)
                .env("HOME", home)
                .env("USER", &name)
                .env("LOGNAME", &name);
        }
        cmd.gid(ids.gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("hook {argv:?} could not start: {e}"))?;
    let out = child
        .stdout
        .take()
        .map(|s| forward(s, scope, program.clone()));
    let err = child
        .stderr
        .take()
        .map(|s| forward(s, scope, program.clone()));
    let output = async { tokio::join!(opt(out), opt(err)) };
    tokio::pin!(output);
    let started = Instant::now();
    let limit = time_limit(line, policy);
    let sleep = async {
        match limit {
            Some((d, _)) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    // Until the cut is armed, the hook's group is killed if this future is
    // dropped (init cancelled): what it started must not outlive the daemon.
    let group = GroupGuard(child.id());
    let mut output_done = false;
    let mut cut = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            // Output ended first (or the hook closed it): keep waiting, cuts armed.
            _ = &mut output, if !output_done => output_done = true,
            _ = &mut sleep => {
                let (d, why) = limit.expect("a sleep only with a limit");
                tracing::warn!(
                    "[{}] {}: cutting {program} after {:.1}s: {why} allows no more; SIGTERM, SIGKILL in {}s",
                    scope.domain, scope.event, d.as_secs_f64(), GRACE.as_secs()
                );
                cut = Some(format!("cut after {:.1}s ({why})", started.elapsed().as_secs_f64()));
                break terminate(&mut child).await;
            }
            _ = policy.hurry.cancelled() => {
                tracing::warn!("[{}] {}: hurrying {program}: SIGTERM, SIGKILL in {}s", scope.domain, scope.event, GRACE.as_secs());
                cut = Some("stopped early: asked to hurry".to_string());
                break terminate(&mut child).await;
            }
        }
    };
    group.disarm();
    let status = status.map_err(|e| format!("hook {argv:?}: waiting for it failed: {e}"))?;
    // A hook may leave a background process holding its stdout open (a
    // server started with `&`): forward what is already written, then move on.
    if !output_done {
        let _ = tokio::time::timeout(OUTPUT_GRACE, &mut output).await;
    }
    if let Some(cut) = cut {
        return Err(format!("hook {argv:?} {cut}"));
    }
    match status.code() {
        Some(code) if line.ec.accepts(code) => Ok(()),
        Some(code) => Err(format!(
            "hook {argv:?} exited with {code} (success is {})",
            line.ec
        )),
        None => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or(0);
            Err(format!("hook {argv:?} was killed by signal {signal}"))
        }
    }
}

/// Kills a hook's process group when dropped before [`GroupGuard::disarm`].
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// SIGTERM to the hook's process group, SIGKILL after [`GRACE`].
async fn terminate(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(GRACE, child.wait()).await {
            let _ = killpg(group, Signal::SIGKILL);
            return status;
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
    child.wait().await
}

/// Who a hook runs as.
struct Identity {
    /// (uid, home, name) when a user is named.
    user: Option<(u32, std::path::PathBuf, String)>,
    gid: u32,
}

/// Looks up `user` and `group` (names or numeric IDs); the group defaults
/// to the user's primary group.
fn identity(user: Option<&str>, group: Option<&str>) -> Result<Identity, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let user = match user {
        None => None,
        Some(u) => {
            let found = match u.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id)),
                Err(_) => User::from_name(u),
            };
            Some(
                found
                    .map_err(|e| format!("looking up user {u:?}: {e}"))?
                    .ok_or_else(|| format!("no user {u:?} on this machine"))?,
            )
        }
    };
    let gid = match group {
        Some(g) => {
            let found = match g.parse::<u32>() {
                Ok(id) => Group::from_gid(Gid::from_raw(id)),
                Err(_) => Group::from_name(g),
            };
            found
                .map_err(|e| format!("looking up group {g:?}: {e}"))?
                .ok_or_else(|| format!("no group {g:?} on this machine"))?
                .gid
                .as_raw()
        }
        None => user
            .as_ref()
            .map_or_else(|| Gid::current().as_raw(), |u| u.gid.as_raw()),
    };
    Ok(Identity {
        user: user.map(|u| (u.uid.as_raw(), u.dir, u.name)),
        gid,
    })
}

async fn opt(f: Option<impl std::future::Future<Output = ()>>) {
    if let Some(f) = f {
        f.await;
    }
}

/// Logs each line; bytes that are not UTF-8 are shown replaced, never a
/// reason to stop reading (which would kill the hook with SIGPIPE).
async fn forward(stream: impl AsyncRead + Unpin, scope: Scope<'_>, program: String) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::info!("[{}] {} {program}: {text}", scope.domain, scope.event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn blocks(exec: &str) -> Vec<ExecBlock> {
        let text = format!(r#"{{ "domains": {{ "d": {{ "exec": {exec} }} }} }}"#);
        Config::from_text("t", &text).unwrap().domains[0]
            .exec
            .clone()
    }

    async fn run_started(exec: &str) -> Result<(), Vec<String>> {
        let blocks = blocks(exec);
        let scope = Scope {
            domain: "d",
            event: Event::Started,
        };
        let chosen = blocks
            .iter()
            .filter(|b| b.runs_on(Event::Started))
            .collect();
        run(
            chosen,
            scope,
            &MacroValues::default(),
            &Policy::new(OnFailure::Stop),
        )
        .await
    }

    #[tokio::test]
    async fn background_process_holding_stdout_does_not_hold_the_daemon() {
        let started = std::time::Instant::now();
        run_started(r#"[{ "lines": [{ "argv": ["/bin/sh", "-c", "sleep 20 & echo started"] }] }]"#)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "waited for the background process"
        );
    }

    #[tokio::test]
    async fn output_that_is_not_utf8_does_not_kill_the_hook() {
        run_started(r#"[{ "lines": [{ "argv": ["/bin/sh", "-c", "printf '\\377\\n'; sleep 0.2; echo after"] }] }]"#)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn exit_codes_and_order() {
        let err = run_started(
            r#"[{ "on": ["started"], "lines": [
                { "argv": ["/bin/sh", "-c", "exit 3"], "ec": "0-3" },
                { "argv": ["/bin/sh", "-c", "exit 4"], "ec": "0-3" },
                { "argv": ["/bin/never-runs"] } ] }]"#,
        )
        .await
        .unwrap_err();
        assert_eq!(err.len(), 1, "stops at the first failure: {err:?}");
        assert!(err[0].contains("exited with 4 (success is 0-3)"), "{err:?}");
    }

    #[tokio::test]
    async fn shutdown_runs_every_line() {
        let blocks = blocks(
            r#"[{ "lines": [{ "argv": ["/bin/false"] }, { "argv": ["/nonexistent/hook"] }] }]"#,
        );
        let scope = Scope {
            domain: "d",
            event: Event::Interrupted,
        };
        let err = run(
            blocks.iter().collect(),
            scope,
            &MacroValues::default(),
            &Policy::new(OnFailure::Continue),
        )
        .await
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[1].contains("could not start"), "{err:?}");
    }

    /// config.md, `ec`: a number is one code; a line's `ec` replaces its
    /// block's (not merged); `null` takes any exit code, but death by a
    /// signal is still a failure.
    #[tokio::test]
    async fn exit_code_specs_as_documented() {
        run_started(r#"[{ "lines": [{ "argv": ["/bin/sh", "-c", "exit 3"], "ec": 3 }] }]"#)
            .await
            .unwrap();
        let err = run_started(r#"[{ "lines": [{ "argv": ["/bin/true"], "ec": 3 }] }]"#)
            .await
            .unwrap_err();
        assert!(err[0].contains("exited with 0 (success is 3)"), "{err:?}");
        // The block accepts 5, the line only 0: 5 fails.
        let err = run_started(
            r#"[{ "ec": "5", "lines": [{ "argv": ["/bin/sh", "-c", "exit 5"], "ec": "0" }] }]"#,
        )
        .await
        .unwrap_err();
        assert!(err[0].contains("exited with 5"), "{err:?}");
        run_started(r#"[{ "ec": null, "lines": [{ "argv": ["/bin/sh", "-c", "exit 77"] }] }]"#)
            .await
            .unwrap();
        let err = run_started(
            r#"[{ "ec": null, "lines": [{ "argv": ["/bin/sh", "-c", "kill -9 $$"] }] }]"#,
        )
        .await
        .unwrap_err();
        assert!(err[0].contains("killed by signal 9"), "{err:?}");
    }
}
