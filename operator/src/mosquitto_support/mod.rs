//! What the broker's pod needs from this binary: the service listener's password file
//! (`iot-operator mqtt-password-file`) and the reload sidecar (`iot-operator mosquitto-reload`).

pub mod cli;
pub mod password_file;
pub mod reload;
