//! The one integration-test binary: every test gets its own PostgreSQL database.

mod cli;
mod helpers;
mod lifecycle;
mod outage;
mod process;
mod queue;
mod rest;
