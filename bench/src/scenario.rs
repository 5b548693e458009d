//! The load scenarios, one module each: its parameters, its result rows and
//! its `run`. The `bench` binary runs them in the order hit, storm,
//! rotation, memory, outage, throttle, outage-new-pods (the report's
//! section numbers); `report` renders their results. Every scenario starts
//! its own fresh agents. `curve` is what the last two read besides their
//! clients (the emulator's per-second calls, the agent's counters).

pub mod curve;
pub mod hit;
pub mod memory;
pub mod outage;
pub mod outage_new_pods;
pub mod rotation;
pub mod storm;
pub mod throttle;
