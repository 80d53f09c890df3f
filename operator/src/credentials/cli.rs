//! `iot-operator device-credentials init-ca | issue | revoke`: the subcommands' flags and what
//! they do with files and Kubernetes objects. Results go to stdout as `key=value` lines (easy
//! to read and to parse in scripts); private keys are only ever written to 0600 files.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use time::{Duration, OffsetDateTime};

use super::crl::{self, Revocation};
use super::files::{self, PUBLIC_MODE};
use super::kube_store::{self, NamespacedName};
use super::{DeviceCa, rfc3339, serial};

/// How often a revocation into a ConfigMap is retried after losing a race to another writer.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCredentialsCommand {
    /// Create a device CA: DIR/ca.crt, DIR/ca.key (mode 0600) and an empty CRL DIR/crl.pem.
    InitCa(InitCaArgs),
    /// Issue a client certificate for one device: DIR/ID.crt (CN = ID, clientAuth, random serial),
    /// DIR/ID.key (mode 0600) and DIR/ca.crt (the device CA). Prints the serial and the paths.
    Issue(IssueArgs),
    /// Add a certificate's serial to the device CRL (earlier entries kept, CRL number
    /// incremented). Mosquitto refuses the certificate after its next reload (SIGHUP).
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitCaArgs {
    /// Directory for ca.crt, ca.key and crl.pem (created if missing; existing files are never
    /// overwritten).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Common name of the CA certificate.
    #[arg(long, value_name = "NAME", default_value = super::ca::DEFAULT_CA_COMMON_NAME)]
    common_name: String,
    /// Days the CA (and its first CRL) is valid.
    #[arg(long, value_name = "N", default_value_t = 3650, value_parser = days_parser())]
    days: u32,
}

/// Where the device CA comes from: `--ca-dir`, `--ca-cert` with `--ca-key`, or `--ca-secret`.
#[derive(Debug, clap::Args)]
pub struct CaSource {
    /// Directory holding ca.crt and ca.key (as written by `init-ca`).
    #[arg(long, value_name = "DIR",
          required_unless_present_any = ["ca_cert", "ca_secret"],
          conflicts_with_all = ["ca_cert", "ca_key", "ca_secret"])]
    ca_dir: Option<PathBuf>,
    /// CA certificate (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "ca_key",
        conflicts_with = "ca_secret"
    )]
    ca_cert: Option<PathBuf>,
    /// CA private key (PKCS#8 PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "ca_cert",
        conflicts_with = "ca_secret"
    )]
    ca_key: Option<PathBuf>,
    /// Kubernetes Secret with the CA (keys tls.crt and tls.key, as cert-manager writes them),
    /// read with the current kubeconfig or service account.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    ca_secret: Option<NamespacedName>,
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Device id: the certificate's CN, the device's MQTT username and client id. 1-64
    /// characters of [A-Za-z0-9._-]; ids starting with `iot-` are reserved.
    #[arg(long = "device", value_name = "ID")]
    device_id: String,
    #[command(flatten)]
    ca: CaSource,
    /// Directory for ID.crt, ID.key and ca.crt (created if missing; an existing ID.crt or
    /// ID.key is never overwritten).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Days the certificate is valid (never past the CA's expiry).
    #[arg(long, value_name = "N", default_value_t = 365, value_parser = days_parser())]
    days: u32,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The certificate to revoke (PEM); it must have been issued by this CA.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "serial",
        conflicts_with = "serial"
    )]
    cert: Option<PathBuf>,
    /// Serial number to revoke, in hex (as `issue` prints it; `:` separators allowed).
    #[arg(long, value_name = "HEX")]
    serial: Option<String>,
    #[command(flatten)]
    ca: CaSource,
    /// CRL file (PEM) to update; started anew if it does not exist.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "crl_configmap",
        conflicts_with = "crl_configmap"
    )]
    crl: Option<PathBuf>,
    /// ConfigMap whose key crl.pem holds the CRL; created if it does not exist.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    crl_configmap: Option<NamespacedName>,
    /// Days until the CRL's next update. Default: the CA's expiry, because Mosquitto (OpenSSL)
    /// refuses every device once the CRL's next update has passed.
    #[arg(long, value_name = "N", value_parser = days_parser())]
    next_update_days: Option<u32>,
}

fn days_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=36_500)
}

/// Runs one `device-credentials` subcommand.
pub async fn run(command: DeviceCredentialsCommand) -> anyhow::Result<()> {
    match command {
        DeviceCredentialsCommand::InitCa(args) => init_ca(args),
        DeviceCredentialsCommand::Issue(args) => issue(args).await,
        DeviceCredentialsCommand::Revoke(args) => revoke(args).await,
    }
}

fn init_ca(args: InitCaArgs) -> anyhow::Result<()> {
    files::ensure_dir(&args.out_dir)?;
    let cert_path = args.out_dir.join("ca.crt");
    let key_path = args.out_dir.join("ca.key");
    let crl_path = args.out_dir.join("crl.pem");
    for path in [&cert_path, &key_path, &crl_path] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists; refusing to replace a CA (move the directory's CA files away first)",
            path.display()
        );
    }
    let now = OffsetDateTime::now_utc();
    let ca = DeviceCa::generate(&args.common_name, Duration::days(args.days.into()), now)?;
    let empty = crl::empty_crl(&ca, now, ca.not_after())?;
    files::write_new_private(&key_path, &ca.key_pem())?;
    files::replace_atomically(&cert_path, ca.cert_pem().as_bytes(), PUBLIC_MODE)?;
    files::replace_atomically(&crl_path, empty.pem.as_bytes(), PUBLIC_MODE)?;
    print_lines(&[
        ("ca_cert", cert_path.display().to_string()),
        ("ca_key", key_path.display().to_string()),
        ("crl", crl_path.display().to_string()),
        ("not_after", rfc3339(ca.not_after())),
    ])
}

async fn issue(args: IssueArgs) -> anyhow::Result<()> {
    // Refuse a bad id before anything is read or created.
    super::validate_device_id(&args.device_id)?;
    let cert_path = args.out_dir.join(format!("{}.crt", args.device_id));
    let key_path = args.out_dir.join(format!("{}.key", args.device_id));
    let ca_path = args.out_dir.join("ca.crt");
    for path in [&cert_path, &key_path] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists; refusing to overwrite a device's credentials (revoke and move them \
             away first, or choose another --out-dir)",
            path.display()
        );
    }
    let client = kube_client_if(args.ca.ca_secret.is_some()).await?;
    let ca = load_ca(&args.ca, client.as_ref()).await?;
    files::ensure_dir(&args.out_dir)?;
    if ca_path.exists() {
        let present = files::read_text(&ca_path)?;
        anyhow::ensure!(
            same_certificate(&present, ca.cert_pem()),
            "{} holds another CA's certificate; choose another --out-dir",
            ca_path.display()
        );
    }
    let issued = ca.issue_device(
        &args.device_id,
        Duration::days(args.days.into()),
        OffsetDateTime::now_utc(),
    )?;
    files::write_new_private(&key_path, &issued.key_pem)?;
    files::replace_atomically(&cert_path, issued.cert_pem.as_bytes(), PUBLIC_MODE)?;
    if !ca_path.exists() {
        files::replace_atomically(&ca_path, ca.cert_pem().as_bytes(), PUBLIC_MODE)?;
    }
    print_lines(&[
        ("device", issued.device_id.clone()),
        ("serial", serial::to_hex(&issued.serial)),
        ("not_after", rfc3339(issued.not_after)),
        ("cert", cert_path.display().to_string()),
        ("key", key_path.display().to_string()),
        ("ca_cert", ca_path.display().to_string()),
    ])
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let client =
        kube_client_if(args.ca.ca_secret.is_some() || args.crl_configmap.is_some()).await?;
    let ca = load_ca(&args.ca, client.as_ref()).await?;
    let serial_number = match (&args.cert, &args.serial) {
        (Some(cert), _) => ca
            .serial_of_issued(&files::read_text(cert)?)
            .with_context(|| format!("--cert {}", cert.display()))?,
        (None, Some(hex)) => serial::parse_hex(hex)?,
        (None, None) => unreachable!("clap requires --cert or --serial"),
    };
    let now = OffsetDateTime::now_utc();
    let next_update = match args.next_update_days {
        Some(days) => now + Duration::days(days.into()),
        None => ca.not_after(),
    };
    let hex = serial::to_hex(&serial_number);
    let (outcome, target) = match (&args.crl, &args.crl_configmap, &client) {
        (Some(path), _, _) => {
            let existing = if path.exists() {
                Some(files::read_text(path)?)
            } else {
                None
            };
            let outcome = crl::revoke(&ca, existing.as_deref(), &serial_number, now, next_update)
                .with_context(|| format!("--crl {}", path.display()))?;
            if let Revocation::Added(signed) = &outcome {
                files::replace_atomically(path, signed.pem.as_bytes(), PUBLIC_MODE)?;
            }
            (outcome, path.display().to_string())
        }
        (None, Some(target), Some(client)) => (
            revoke_in_config_map(client, target, &ca, &serial_number, now, next_update).await?,
            format!("configmap/{target}"),
        ),
        _ => unreachable!("clap requires --crl or --crl-configmap; a client exists for the latter"),
    };
    match outcome {
        Revocation::Added(signed) => print_lines(&[
            ("revoked", hex),
            ("crl", target),
            ("crl_number", serial::to_hex(&signed.number)),
            ("revoked_count", signed.revoked.len().to_string()),
            ("next_update", rfc3339(next_update)),
        ]),
        Revocation::AlreadyRevoked => print_lines(&[("already_revoked", hex), ("crl", target)]),
    }
}

/// Read, revoke, write, again from the start if another writer changed the ConfigMap between.
async fn revoke_in_config_map(
    client: &kube::Client,
    target: &NamespacedName,
    ca: &DeviceCa,
    serial_number: &[u8],
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> anyhow::Result<Revocation> {
    for _ in 0..CONFLICT_RETRIES {
        let read = kube_store::read_crl_config_map(client, target).await?;
        let existing = read.as_ref().and_then(kube_store::crl_pem);
        let outcome = crl::revoke(ca, existing, serial_number, now, next_update)
            .with_context(|| format!("the CRL in ConfigMap {target}"))?;
        let Revocation::Added(signed) = &outcome else {
            return Ok(outcome);
        };
        match kube_store::write_crl_config_map(client, target, read, &signed.pem).await {
            Ok(()) => return Ok(outcome),
            Err(e) if kube_store::is_conflict(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("writing the CRL ConfigMap {target}")),
        }
    }
    anyhow::bail!("the CRL ConfigMap {target} kept changing while revoking; try again")
}

async fn kube_client_if(needed: bool) -> anyhow::Result<Option<kube::Client>> {
    if !needed {
        return Ok(None);
    }
    kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster service account or KUBECONFIG)")
        .map(Some)
}

async fn load_ca(source: &CaSource, client: Option<&kube::Client>) -> anyhow::Result<DeviceCa> {
    let (cert_pem, key_pem, origin) = match source {
        CaSource {
            ca_dir: Some(dir), ..
        } => (
            files::read_text(&dir.join("ca.crt"))?,
            files::read_text(&dir.join("ca.key"))?,
            dir.display().to_string(),
        ),
        CaSource {
            ca_cert: Some(cert),
            ca_key: Some(key),
            ..
        } => (
            files::read_text(cert)?,
            files::read_text(key)?,
            cert.display().to_string(),
        ),
        CaSource {
            ca_secret: Some(target),
            ..
        } => {
            let client = client.expect("a client is made for --ca-secret");
            let (cert, key) = kube_store::read_ca_secret(client, target).await?;
            (cert, key, format!("secret/{target}"))
        }
        _ => unreachable!("clap requires one CA source"),
    };
    DeviceCa::from_pem(&cert_pem, &key_pem).with_context(|| format!("loading the CA from {origin}"))
}

/// Whether two PEM texts hold the same first certificate (whitespace and line breaks aside).
fn same_certificate(a: &str, b: &str) -> bool {
    let der = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, p)| p.contents)
    };
    der(a).is_some() && der(a) == der(b)
}

fn print_lines(lines: &[(&str, String)]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for (key, value) in lines {
        writeln!(out, "{key}={value}")?;
    }
    Ok(())
}
