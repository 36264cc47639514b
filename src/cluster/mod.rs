//! The cluster: who the members are (`members`), which one masters a key
//! (`placement`), and how a node talks to its peers (`peer`).

pub mod members;
pub mod peer;
pub mod placement;

pub use members::Members;
pub use peer::Peers;
