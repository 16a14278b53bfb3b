//! ec2fleetd's integration tests: one binary, run against moto and the IMDS
//! emulator from `ec2fleetd-testbed`. None of them reaches AWS.

mod chaos;
mod check;
mod claims;
mod common;
mod cut_short;
mod dns;
mod double;
mod fleet;
mod follow;
mod fuzz_found;
mod game;
mod imds;
mod lifecycle;
mod notify;
mod players;
mod policy;
mod pools;
mod run;
mod scaling;
mod units;
