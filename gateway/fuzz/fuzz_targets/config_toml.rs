//! The TOML config file (`[[channels]]` rules): any text parses or not without panicking; a
//! parsed file validates or not, and every channel pattern routes its own topic.
#![no_main]

use std::sync::Arc;

use gateway::channel::{ConfigChannel, Router};
use gateway::protocol::TopicPattern;
use gateway::config::{Config, ConfigFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = ConfigFile::parse(text) else {
        return;
    };
    let config = Config {
        channels: file.channels,
        ..Config::default()
    };
    let _ = config.validate();
    let mut router = Router::new();
    for spec in &config.channels {
        assert!(TopicPattern::parse(&spec.pattern).matches(&spec.pattern));
        let spec = Arc::new(spec.clone());
        let pattern = spec.pattern.clone();
        router = router.channel(&pattern, move |_| ConfigChannel::new(spec.clone()));
    }
    for spec in &config.channels {
        assert!(router.route(&spec.pattern).is_some(), "{:?}", spec.pattern);
    }
});
