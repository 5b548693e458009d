//! The load scenarios, one module each: its parameters, its result rows and
//! its `run`. The `bench` binary runs them in the order hit, storm,
//! rotation, memory, outage (the report's section numbers); `report`
//! renders their results. Every scenario starts its own fresh agents.

pub mod hit;
pub mod memory;
pub mod outage;
pub mod rotation;
pub mod storm;
