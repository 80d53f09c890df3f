//! Who the bridge and the simulator are to the MQTT broker, and how they know it is the broker:
//! a username and password, a client certificate, and TLS with the CA that signed the broker's
//! certificate. Secrets come from files (mounted Secrets), read once at start; the password is
//! never logged ([`MqttSecurity`]'s `Debug` leaves it out).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rumqttc::{TlsConfiguration, Transport};

/// Command-line and environment settings of the MQTT identity.
#[derive(Args, Clone, Debug, Default)]
pub struct MqttSecurityArgs {
    /// Username to connect with (with the password of `--mqtt-password-file`).
    #[arg(long, env = "IOT_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// File whose contents (without a trailing newline) are the password.
    #[arg(long, env = "IOT_MQTT_PASSWORD_FILE", requires = "mqtt_username")]
    pub mqtt_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the broker's certificate; the connection uses TLS and
    /// verifies the broker against it (an `mqtts://` URL needs it).
    #[arg(long, env = "IOT_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for brokers that authenticate clients by certificate.
    #[arg(
        long,
        env = "IOT_MQTT_CERT_FILE",
        requires = "mqtt_key_file",
        requires = "mqtt_ca_file"
    )]
    pub mqtt_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "IOT_MQTT_KEY_FILE", requires = "mqtt_cert_file")]
    pub mqtt_key_file: Option<PathBuf>,
}

/// The MQTT identity, read from its files.
#[derive(Clone, Default)]
pub struct MqttSecurity {
    credentials: Option<(String, String)>,
    tls: Option<TlsConfiguration>,
}

impl std::fmt::Debug for MqttSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSecurity")
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the MQTT {what} {}", path.display()))
}

impl MqttSecurity {
    /// Reads the files `args` names. `tls_url`: the broker URL is `mqtts://`, which needs a CA.
    pub fn load(args: &MqttSecurityArgs, tls_url: bool) -> anyhow::Result<Self> {
        let credentials = match &args.mqtt_username {
            None => None,
            Some(user) => {
                let password = match &args.mqtt_password_file {
                    None => String::new(),
                    Some(path) => String::from_utf8(read(path, "password file")?)
                        .context("the MQTT password file is not UTF-8")?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                };
                Some((user.clone(), password))
            }
        };
        anyhow::ensure!(
            !tls_url || args.mqtt_ca_file.is_some(),
            "an mqtts:// broker URL needs the CA of the broker's certificate (IOT_MQTT_CA_FILE)"
        );
        let tls = match &args.mqtt_ca_file {
            None => None,
            Some(ca) => {
                let client_auth = match (&args.mqtt_cert_file, &args.mqtt_key_file) {
                    (Some(cert), Some(key)) => {
                        Some((read(cert, "client certificate")?, read(key, "client key")?))
                    }
                    _ => None,
                };
                // rustls needs a process-wide crypto provider; the first caller installs ring
                // (the provider the rest of the workspace uses), later calls find it there.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Some(TlsConfiguration::Simple {
                    ca: read(ca, "CA file")?,
                    alpn: None,
                    client_auth,
                })
            }
        };
        Ok(Self { credentials, tls })
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    fn transport(&self) -> Option<Transport> {
        self.tls.clone().map(Transport::tls_with_config)
    }

    /// Applies the identity to an MQTT 3.1.1 connection (the simulator's devices).
    pub fn apply(&self, options: &mut rumqttc::MqttOptions) {
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if let Some(transport) = self.transport() {
            options.set_transport(transport);
        }
    }

    /// Applies the identity to an MQTT 5 connection (the bridge).
    pub fn apply_v5(&self, options: &mut rumqttc::v5::MqttOptions) {
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if let Some(transport) = self.transport() {
            options.set_transport(transport);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn the_password_comes_from_its_file_without_the_newline_and_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("iot-mqtt-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = MqttSecurityArgs {
            mqtt_username: Some("bridge".into()),
            mqtt_password_file: Some(file(&dir, "password", "s3cret-value\n")),
            ..Default::default()
        };
        let security = MqttSecurity::load(&args, false).unwrap();
        assert_eq!(
            security.credentials,
            Some(("bridge".to_string(), "s3cret-value".to_string()))
        );
        assert!(!security.tls());
        let shown = format!("{security:?}");
        assert!(
            shown.contains("bridge") && !shown.contains("s3cret"),
            "{shown}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_needs_a_ca_and_files_that_exist() {
        assert!(MqttSecurity::load(&MqttSecurityArgs::default(), true).is_err());
        let missing = MqttSecurityArgs {
            mqtt_ca_file: Some("/nonexistent/ca.crt".into()),
            ..Default::default()
        };
        let err = MqttSecurity::load(&missing, true).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.crt"),
            "{err:#}"
        );
    }
}
