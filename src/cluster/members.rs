//! The member list: every node's id and URL, the same ids on every node.
//! A node's own entry is "self"; the others are its peers.

use crate::config::Member;

use super::placement;

/// The cluster as one node sees it.
#[derive(Clone, Debug)]
pub struct Members {
    self_id: String,
    members: Vec<Member>,
}

impl Members {
    /// `members` must hold `self_id` exactly once (config validation checks).
    pub fn new(self_id: &str, members: Vec<Member>) -> Members {
        Members {
            self_id: self_id.to_owned(),
            members,
        }
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// Every member, self included, in config order.
    pub fn all(&self) -> &[Member] {
        &self.members
    }

    /// Every member but this node.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.id != self.self_id)
    }

    pub fn peer_count(&self) -> usize {
        self.members.len().saturating_sub(1)
    }

    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The master of `key`.
    pub fn master(&self, key: &str) -> &Member {
        let i = placement::master_index(self.members.iter().map(|m| m.id.as_str()), key)
            .expect("a cluster has at least one member");
        &self.members[i]
    }
}
