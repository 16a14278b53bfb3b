//! The ground ec2fleetd is tested and demonstrated on, with no AWS account:
//! the AWS test double, moto with the rules real AWS enforces ([`moto`] starts
//! it, [`double`] steers it), an IMDSv2 emulator ([`imds`]), a simulated
//! fleet built from both ([`world`]), and a way to run the daemon against it
//! and watch what it tells systemd ([`daemon`], [`notify_socket`]), and a
//! receiver for its webhooks ([`webhook`]); and the benchmarks ([`mod@bench`]).

pub mod bench;
pub mod chaos;
pub mod daemon;
pub mod dataset_chaos;
pub mod double;
pub mod imds;
pub mod moto;
pub mod notify_socket;
pub mod webhook;
pub mod world;
