//! What one step did to the kernel's state: the word every step answers in.

/// Whether a step changed kernel state or found it already in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Made,
    Present,
}
