//! Reading a Prometheus text exposition (`/metrics`): one series written exactly, or the sum of
//! a family. A test asserts on these numbers; parsing a scrape's types and labels in depth is
//! the observability suite's own subject and stays there.

/// The value of the series written exactly `series` (metric name plus labels as rendered,
/// e.g. `gateway_disconnects_total{reason="drain"}`); `None` when the scrape lacks it.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.starts_with(' ')
            .then(|| rest.trim().parse().ok())
            .flatten()
    })
}

/// Like [`metric`], 0 when the series is absent (a counter no event has created yet).
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

/// The sum of every series of the family `name` (`name` alone or `name{...}`), e.g. every
/// reason of `gateway_disconnects_total`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
