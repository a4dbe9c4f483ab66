//! onRotate hooks: the manifest's commands, run without a shell, with a time limit, their
//! output captured into the log.

use std::process::Stdio;

use crate::manifest::{Hook, KeyPair, Output};

/// What happened to a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// A staged generation was published as next.
    Publish,
    /// A generation became current.
    Activate,
}

impl HookEvent {
    /// `publish` or `activate`, as hooks see it in `KEYPROV_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Publish => "publish",
            HookEvent::Activate => "activate",
        }
    }

    fn selects(self, hook: &Hook) -> bool {
        match self {
            HookEvent::Publish => hook.on_publish,
            HookEvent::Activate => hook.on_activate,
        }
    }
}

/// Runs every hook of `key` that listens to `event`, in order; stops at the first failure.
pub async fn run(key: &KeyPair, event: HookEvent, generation: u32) -> Result<(), String> {
    let dirs: Vec<String> = key
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::File(file) => Some(file.dir.display().to_string()),
            Output::SecretsManager(_) => None,
        })
        .collect();
    for hook in key.on_rotate.iter().filter(|h| event.selects(h)) {
        run_one(key, hook, event, generation, &dirs.join(":")).await?;
    }
    Ok(())
}

async fn run_one(
    key: &KeyPair,
    hook: &Hook,
    event: HookEvent,
    generation: u32,
    dirs: &str,
) -> Result<(), String> {
    let program = &hook.command[0];
    let child = tokio::process::Command::new(program)
        .args(&hook.command[1..])
        .env("KEYPROV_NAME", &key.name)
        .env("KEYPROV_GENERATION", generation.to_string())
        .env("KEYPROV_EVENT", event.as_str())
        .env("KEYPROV_OUTPUT_DIRS", dirs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("onRotate {program}: cannot start: {err}"))?;
    let output = match tokio::time::timeout(hook.timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(|err| format!("onRotate {program}: {err}"))?,
        Err(_) => {
            return Err(format!(
                "onRotate {program}: killed after its timeout of {}",
                humantime::format_duration(hook.timeout)
            ));
        }
    };
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            tracing::info!(key = %key.name, hook = %program, stream, "{line}");
        }
    }
    if output.status.success() {
        tracing::info!(key = %key.name, hook = %program, event = event.as_str(), generation, "onRotate succeeded");
        Ok(())
    } else {
        Err(format!("onRotate {program} failed with {}", output.status))
    }
}
