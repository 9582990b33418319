//! Session memory: the last turns of each session, within fixed bounds.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
}

#[derive(Debug)]
struct Session {
    turns: VecDeque<Turn>,
    bytes: usize,
    last_used: u64,
}

/// Earlier turns per session id, within fixed bounds.
#[derive(Debug)]
pub struct SessionMemory {
    sessions: HashMap<String, Session>,
    capacity: usize,
    bytes_per_session: usize,
    clock: u64,
}

impl SessionMemory {
    pub fn new(capacity: usize, bytes_per_session: usize) -> Self {
        SessionMemory { sessions: HashMap::with_capacity(capacity), capacity, bytes_per_session, clock: 0 }
    }

    /// The session's turns, oldest first.
    pub fn turns(&mut self, id: &str) -> Vec<Turn> {
        self.clock += 1;
        match self.sessions.get_mut(id) {
            Some(s) => {
                s.last_used = self.clock;
                s.turns.iter().cloned().collect()
            }
            None => Vec::new(),
        }
    }

    pub fn remember(&mut self, id: &str, user: &str, assistant: &str) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        if !self.sessions.contains_key(id) && self.sessions.len() >= self.capacity {
            // Evict the least recently used session.
            if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) {
                self.sessions.remove(&oldest);
            }
        }
        let limit = self.bytes_per_session;
        let session = self.sessions.entry(id.to_string()).or_insert_with(|| Session {
            turns: VecDeque::new(),
            bytes: 0,
            last_used: 0,
        });
        session.last_used = self.clock;
        let turn = Turn { user: truncate(user, limit / 2), assistant: truncate(assistant, limit / 2) };
        session.bytes += turn.user.len() + turn.assistant.len();
        session.turns.push_back(turn);
        while session.bytes > limit {
            let Some(old) = session.turns.pop_front() else { break };
            session.bytes -= old.user.len() + old.assistant.len();
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn session_bytes(&self, id: &str) -> usize {
        self.sessions.get(id).map(|s| s.bytes).unwrap_or(0)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
