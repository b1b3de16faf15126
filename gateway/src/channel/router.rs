//! The Router: topic patterns (`room:*` prefix patterns and exact topics) → channel factories,
//! like Phoenix's `channel "room:*", RoomChannel`. Exact topics win over patterns; among
//! patterns the longest prefix wins, so routing does not depend on declaration order.

use std::sync::Arc;

use super::{Channel, ChannelFactory};
use crate::protocol::TopicPattern;

/// Topic patterns → channel factories.
#[derive(Clone, Default)]
pub struct Router {
    /// Routes, most specific first.
    routes: Vec<(TopicPattern, ChannelFactory)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(p, _)| p))
            .finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Route topics matching `pattern` to channels made by `factory`.
    pub fn channel<F, C>(mut self, pattern: &str, factory: F) -> Self
    where
        F: Fn(&str) -> C + Send + Sync + 'static,
        C: Channel,
    {
        let f: ChannelFactory =
            Arc::new(move |topic: &str| Box::new(factory(topic)) as Box<dyn Channel>);
        self.routes.push((TopicPattern::parse(pattern), f));
        self.routes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        self
    }

    /// The factory for a topic, if any pattern matches.
    pub fn route(&self, topic: &str) -> Option<&ChannelFactory> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, f)| f)
    }

    /// Whether no route is defined.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
