//! ec2fleetd: makes stateful software survive EC2 spot interruptions.
//!
//! The modules follow the data: [`config`] and [`imds`] bring the config and
//! the instance's facts in; [`volumes`] (EC2), [`dns`] (Route53),
//! [`hooks`] (processes) and [`notify`] (SNS, SQS, webhooks) each do one job;
//! [`lifecycle`] owns the order, over each domain's [`ledger`] of what it
//! holds; [`players`] counts a game server's players; [`systemd`] and
//! [`status`] report it; [`policy`] derives
//! the IAM policy a config needs. [`aws`] is the one
//! place SDK clients are made; [`retry`] paces the calls worth repeating.

pub mod autoscaling;
pub mod aws;
pub mod config;
pub mod dns;
pub mod fleet;
pub mod hooks;
pub mod imds;
pub mod ledger;
pub mod lifecycle;
pub mod notify;
pub mod players;
pub mod policy;
pub mod retry;
pub mod status;
pub mod systemd;
pub mod volumes;
