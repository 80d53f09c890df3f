//! Flags and entry points of `iot-operator mqtt-password-file` and `iot-operator
//! mosquitto-reload`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::password_file;
use super::reload::{self, ReloadTarget};
use crate::credentials::files::{self, PRIVATE_MODE};

#[derive(Debug, clap::Args)]
pub struct MqttPasswordFileArgs {
    /// A user and the file holding its password (one trailing line break is ignored), e.g.
    /// `iot-bridge=/run/secrets/bridge/password`. Repeat for more users.
    #[arg(long = "user", value_name = "NAME=PASSWORD_FILE", required = true, num_args = 1..,
          value_parser = parse_user)]
    users: Vec<(String, PathBuf)>,
    /// The password file to write (mode 0600, replaced atomically). Users whose password is
    /// unchanged keep their line, so rewriting an unchanged file changes no byte.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn parse_user(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !file.is_empty() => {
            password_file::validate_username(name).map_err(|e| e.to_string())?;
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!("{s:?}: expected NAME=PASSWORD_FILE")),
    }
}

/// Writes the password file; prints its path and users (never a password or hash).
pub fn mqtt_password_file(args: MqttPasswordFileArgs) -> anyhow::Result<()> {
    let mut users = Vec::with_capacity(args.users.len());
    for (name, file) in &args.users {
        let content = std::fs::read(file)
            .with_context(|| format!("reading the password of {name:?} from {}", file.display()))?;
        users.push((
            name.clone(),
            password_file::password_from_file_content(&content).to_vec(),
        ));
    }
    let previous = std::fs::read_to_string(&args.out).ok();
    let text = password_file::render(&users, previous.as_deref())?;
    files::replace_atomically(&args.out, text.as_bytes(), PRIVATE_MODE)?;
    let names: Vec<&str> = users.iter().map(|(n, _)| n.as_str()).collect();
    println!("password_file={}", args.out.display());
    println!("users={}", names.join(","));
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct MosquittoReloadArgs {
    /// A file whose change of content makes the broker reload (certificates, CRL, password
    /// file, ACL). Repeat for more files.
    #[arg(long = "watch", value_name = "FILE", required = true, num_args = 1..)]
    watch: Vec<PathBuf>,
    /// Seconds between two reads of the watched files.
    #[arg(long, env = "IOT_RELOAD_INTERVAL", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval_seconds: u64,
    /// Exact /proc/PID/comm of the processes to send SIGHUP.
    #[arg(long, env = "IOT_RELOAD_PROCESS_NAME", value_name = "NAME",
          default_value = reload::DEFAULT_PROCESS_NAME)]
    process_name: String,
}

/// Runs the reload loop until SIGTERM or Ctrl-C.
pub async fn mosquitto_reload(args: MosquittoReloadArgs) -> anyhow::Result<()> {
    let target = ReloadTarget {
        process_name: args.process_name,
        ..ReloadTarget::default()
    };
    reload::run(
        args.watch,
        Duration::from_secs(args.interval_seconds),
        target,
        iot_process::telemetry::shutdown_signal(),
    )
    .await;
    Ok(())
}
