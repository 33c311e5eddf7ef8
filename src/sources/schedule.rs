//! When a watch source lists its prefix: a cron expression in an IANA time zone, or a fixed
//! period. Pure functions of an instant: the caller passes the database's clock, never this
//! host's (ADR 0012).
//!
//! Daylight-saving rules, as Vixie cron users expect: a local time that does not exist (the
//! hour skipped in spring) fires once, at the first instant after the gap; a local time that
//! occurs twice (the hour repeated in autumn) fires once, at its first occurrence.

use std::time::Duration;

use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime,
    NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// How far ahead a cron expression is searched for its next instant: a leap day on a given
/// weekday recurs within 28 years; anything rarer is refused as "never fires".
const SEARCH_YEARS: i32 = 30;

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron {
        cron: Cron,
        tz: Tz,
        text: String,
    },
    /// Every `period`, on multiples of it since the Unix epoch (so every process agrees on
    /// the slots without talking to each other).
    Every {
        period: Duration,
        text: String,
    },
}

impl Schedule {
    /// `schedule` (cron, 5 or 6 fields) or `every` ("30s", "5m", "1h", "500ms"), exactly one.
    pub fn parse(
        schedule: Option<&str>,
        every: Option<&str>,
        timezone: Option<&str>,
    ) -> Result<Schedule, String> {
        match (schedule, every) {
            (Some(_), Some(_)) => Err("set either `schedule` or `every`, not both".into()),
            (None, None) => Err("needs `schedule` (cron) or `every` (a period)".into()),
            (None, Some(e)) => {
                if timezone.is_some() {
                    return Err("`timezone` applies to `schedule`, not to `every`".into());
                }
                let period = parse_period(e)?;
                Ok(Schedule::Every {
                    period,
                    text: format!("every {e}"),
                })
            }
            (Some(s), None) => {
                let cron = Cron::parse(s)?;
                let tz_name = timezone.unwrap_or("UTC");
                let tz: Tz = tz_name.parse().map_err(|_| {
                    format!("timezone {tz_name:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")")
                })?;
                let sched = Schedule::Cron {
                    cron,
                    tz,
                    text: format!("{s} ({tz_name})"),
                };
                // A schedule that never fires (Feb 30) is a typo, not a setting.
                if sched
                    .next_after(DateTime::<Utc>::from_timestamp(0, 0).expect("epoch"))
                    .is_none()
                {
                    return Err(format!("schedule {s:?} never fires"));
                }
                Ok(sched)
            }
        }
    }

    /// The text stored beside the slot: a changed schedule recomputes `next_slot`.
    pub fn text(&self) -> &str {
        match self {
            Schedule::Cron { text, .. } | Schedule::Every { text, .. } => text,
        }
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every { period, .. } => {
                let p = period.as_millis() as i64;
                let ms = t.timestamp_millis();
                let next = (ms.div_euclid(p) + 1) * p;
                DateTime::<Utc>::from_timestamp_millis(next)
            }
            Schedule::Cron { cron, tz, .. } => cron.next_after(t, tz),
        }
    }
}

fn parse_period(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("every {s:?}: expected a number and a unit, like \"30s\" or \"5m\"")
    })?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => {
            return Err(format!(
                "every {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"
            ));
        }
    };
    if ms < 1000 {
        return Err(format!("every {s:?}: at least 1s"));
    }
    Ok(Duration::from_millis(ms))
}

/// A parsed cron expression: which seconds, minutes, hours, days of month, months and days
/// of week match (bit sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// Both day fields restricted: a day matches either (Vixie cron); otherwise both.
    day_or: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Cron {
    /// Five fields (minute hour day-of-month month day-of-week) or six (seconds first);
    /// `*`, `?`, lists, ranges, steps, month and day names, and the `@hourly`-style macros.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(format!("unknown cron macro {t:?}")),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "cron {text:?} has {n} fields: expected 5 (minute hour day month weekday) or 6 (seconds first)"
                ));
            }
        };
        let err = |what: &str, e: String| format!("cron {text:?}, {what} field: {e}");
        let seconds = field(sec, 0, 59, None).map_err(|e| err("seconds", e))?;
        let minutes = field(rest[0], 0, 59, None).map_err(|e| err("minute", e))?;
        let hours = field(rest[1], 0, 23, None).map_err(|e| err("hour", e))?;
        let dom = field(rest[2], 1, 31, None).map_err(|e| err("day-of-month", e))?;
        let months = field(rest[3], 1, 12, Some(&MONTHS[..])).map_err(|e| err("month", e))?;
        let mut dow = field(rest[4], 0, 7, Some(&DAYS[..])).map_err(|e| err("day-of-week", e))?;
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        let star = |f: &str| f == "*" || f == "?";
        Ok(Cron {
            seconds,
            minutes,
            hours: hours as u32,
            days_of_month: dom as u32,
            months: months as u16,
            days_of_week: (dow & 0x7f) as u8,
            day_or: !star(rest[2]) && !star(rest[4]),
        })
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << d.day()) != 0;
        let dow = self.days_of_week & (1 << d.weekday().num_days_from_sunday()) != 0;
        if self.day_or { dom || dow } else { dom && dow }
    }

    /// Local wall-clock times that match, from `from` (inclusive) on, in order.
    fn local_times_from(&self, from: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        let start_day = from.date();
        let last_day = start_day
            .with_year(start_day.year() + SEARCH_YEARS)
            .unwrap_or(NaiveDate::MAX);
        start_day
            .iter_days()
            .take_while(move |d| *d <= last_day)
            .filter(|d| self.day_matches(*d))
            .flat_map(move |d| {
                bits(self.hours as u64, 24).flat_map(move |h| {
                    bits(self.minutes, 60).flat_map(move |m| {
                        bits(self.seconds, 60).map(move |s| {
                            d.and_time(NaiveTime::from_hms_opt(h, m, s).expect("valid time"))
                        })
                    })
                })
            })
            .filter(move |t| *t >= from)
    }

    /// The first matching instant strictly after `t`, in zone `tz`.
    pub fn next_after(&self, t: DateTime<Utc>, tz: &Tz) -> Option<DateTime<Utc>> {
        // Mapping local times to instants (earliest of a repeated time, the gap's end for a
        // skipped one) never goes backwards, so the first candidate past `t` is the answer.
        let from = t.with_timezone(tz).naive_local().with_nanosecond(0)?;
        self.local_times_from(from)
            .filter_map(|local| to_instant(local, tz))
            .find(|at| *at > t)
    }
}

/// The instant a local time names: the first of two (autumn), or the end of the gap it falls
/// in (spring).
fn to_instant(local: NaiveDateTime, tz: &Tz) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // Gaps end on a whole minute in every zone of the tz database.
            let mut probe = local.with_second(0)?;
            for _ in 0..(48 * 60) {
                probe += ChronoDuration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return Some(t.with_timezone(&Utc));
                }
            }
            None
        }
    }
}

fn bits(set: u64, n: u32) -> impl Iterator<Item = u32> {
    (0..n).filter(move |i| set & (1u64 << i) != 0)
}

/// One cron field as a bit set over `lo..=hi`.
fn field(text: &str, lo: u32, hi: u32, names: Option<&[&str]>) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(names) = names
            && let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s))
        {
            // Months are 1-based, weekdays 0-based.
            return Ok(i as u32 + lo);
        }
        let v: u32 = s.parse().map_err(|_| {
            format!(
                "{s:?} is not a number{}",
                if names.is_some() { " or a name" } else { "" }
            )
        })?;
        if v < lo || v > hi {
            return Err(format!("{v} is outside {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(format!("empty list item in {text:?}"));
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/n` means from a to the end, every n.
            (a, if part.contains('/') { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(sched: &Schedule, after: &str) -> String {
        sched.next_after(utc(after)).unwrap().to_rfc3339()
    }

    fn cron(s: &str, tz: Option<&str>) -> Schedule {
        Schedule::parse(Some(s), None, tz).unwrap()
    }

    /// The slots a schedule fires at between two instants.
    fn slots(sched: &Schedule, from: &str, to: &str) -> Vec<String> {
        let mut out = vec![];
        let mut t = utc(from);
        while let Some(n) = sched.next_after(t) {
            if n > utc(to) {
                break;
            }
            out.push(n.to_rfc3339());
            t = n;
        }
        out
    }

    #[test]
    fn five_fields_fire_on_the_minute_six_fields_on_the_second() {
        let five = cron("*/5 * * * *", None);
        assert_eq!(
            next(&five, "2026-03-01T10:02:30Z"),
            "2026-03-01T10:05:00+00:00"
        );
        assert_eq!(
            next(&five, "2026-03-01T10:05:00Z"),
            "2026-03-01T10:10:00+00:00"
        );
        let six = cron("*/15 * * * * *", None);
        assert_eq!(
            next(&six, "2026-03-01T10:02:30Z"),
            "2026-03-01T10:02:45+00:00"
        );
        assert_eq!(
            next(&six, "2026-03-01T10:02:59.5Z"),
            "2026-03-01T10:03:00+00:00"
        );
        let sec = cron("30 0 12 * * MON-FRI", None);
        // 2026-03-07 is a Saturday: next is Monday the 9th.
        assert_eq!(
            next(&sec, "2026-03-06T12:00:30Z"),
            "2026-03-09T12:00:30+00:00"
        );
    }

    #[test]
    fn lists_ranges_steps_names_and_macros() {
        assert_eq!(
            next(&cron("0 9-17/4 * * *", None), "2026-01-01T10:00:00Z"),
            "2026-01-01T13:00:00+00:00"
        );
        assert_eq!(
            next(&cron("0 0 1 jan,jul *", None), "2026-02-01T00:00:00Z"),
            "2026-07-01T00:00:00+00:00"
        );
        assert_eq!(
            next(&cron("@hourly", None), "2026-01-01T10:59:59Z"),
            "2026-01-01T11:00:00+00:00"
        );
        // Day of month OR day of week when both are restricted: the 13th, or a Friday.
        let either = cron("0 0 13 * 5", None);
        assert_eq!(
            next(&either, "2026-02-01T00:00:00Z"),
            "2026-02-06T00:00:00+00:00"
        );
        assert_eq!(
            next(&either, "2026-02-06T00:00:00Z"),
            "2026-02-13T00:00:00+00:00"
        );
        // 7 is Sunday.
        assert_eq!(
            next(&cron("0 0 * * 7", None), "2026-03-02T00:00:00Z"),
            "2026-03-08T00:00:00+00:00"
        );
        // Leap day.
        assert_eq!(
            next(&cron("0 0 29 2 *", None), "2026-01-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let err = |s: &str| Schedule::parse(Some(s), None, None).unwrap_err();
        assert!(err("* * * *").contains("4 fields"), "{}", err("* * * *"));
        assert!(err("61 * * * *").contains("minute field"));
        assert!(err("0 0 30 2 *").contains("never fires"));
        assert!(err("*/0 * * * *").contains("step of 0"));
        assert!(err("0 5-2 * * *").contains("backwards"));
        assert!(err("0 0 * * FUNDAY").contains("day-of-week"));
        let tz = Schedule::parse(Some("* * * * *"), None, Some("Mars/Olympus")).unwrap_err();
        assert!(tz.contains("IANA"), "{tz}");
        assert!(Schedule::parse(Some("* * * * *"), Some("5s"), None).is_err());
        assert!(Schedule::parse(None, None, None).is_err());
        assert!(Schedule::parse(None, Some("5 parsecs"), None).is_err());
        assert!(Schedule::parse(None, Some("10ms"), None).is_err());
    }

    #[test]
    fn every_runs_on_multiples_of_its_period_since_the_epoch() {
        let every = Schedule::parse(None, Some("30s"), None).unwrap();
        assert_eq!(
            next(&every, "2026-03-01T10:00:10Z"),
            "2026-03-01T10:00:30+00:00"
        );
        assert_eq!(
            next(&every, "2026-03-01T10:00:30Z"),
            "2026-03-01T10:01:00+00:00"
        );
        let hour = Schedule::parse(None, Some("1h"), None).unwrap();
        assert_eq!(
            next(&hour, "2026-03-01T10:00:10Z"),
            "2026-03-01T11:00:00+00:00"
        );
    }

    #[test]
    fn time_zones_shift_the_slots() {
        // 08:00 in Berlin is 07:00 UTC in winter, 06:00 UTC in summer.
        let s = cron("0 8 * * *", Some("Europe/Berlin"));
        assert_eq!(
            next(&s, "2026-01-10T00:00:00Z"),
            "2026-01-10T07:00:00+00:00"
        );
        assert_eq!(
            next(&s, "2026-07-10T00:00:00Z"),
            "2026-07-10T06:00:00+00:00"
        );
        let ny = cron("0 0 * * *", Some("America/New_York"));
        assert_eq!(
            next(&ny, "2026-01-10T00:00:00Z"),
            "2026-01-10T05:00:00+00:00"
        );
    }

    #[test]
    fn a_local_time_skipped_in_spring_fires_once_at_the_end_of_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let s = cron("30 2 * * *", Some("Europe/Berlin"));
        assert_eq!(
            next(&s, "2026-03-28T12:00:00Z"),
            "2026-03-29T01:00:00+00:00"
        );
        // The day after, 02:30 CEST exists again.
        assert_eq!(
            next(&s, "2026-03-29T01:00:00Z"),
            "2026-03-30T00:30:00+00:00"
        );
        // Every 15 minutes across the gap: 01:45 CET, then 03:00 CEST once (02:00, 02:15,
        // 02:30 and 02:45 do not exist and all map to it), then 03:15.
        let q = cron("*/15 * * * *", Some("Europe/Berlin"));
        assert_eq!(
            slots(&q, "2026-03-29T00:30:00Z", "2026-03-29T01:15:00Z"),
            [
                "2026-03-29T00:45:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-29T01:15:00+00:00"
            ]
        );
    }

    #[test]
    fn a_local_time_repeated_in_autumn_fires_once() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens at 00:30 UTC
        // and again at 01:30 UTC.
        let s = cron("30 2 * * *", Some("Europe/Berlin"));
        assert_eq!(
            next(&s, "2026-10-24T12:00:00Z"),
            "2026-10-25T00:30:00+00:00"
        );
        // From inside the second occurrence and from just after the first: the next day.
        assert_eq!(
            next(&s, "2026-10-25T00:30:00Z"),
            "2026-10-26T01:30:00+00:00"
        );
        assert_eq!(
            next(&s, "2026-10-25T01:29:00Z"),
            "2026-10-26T01:30:00+00:00"
        );
        // Hourly across the change: 02:00 CEST (00:00Z) fires, 02:00 CET (01:00Z) does not,
        // then 03:00 CET (02:00Z).
        let h = cron("0 * * * *", Some("Europe/Berlin"));
        assert_eq!(
            slots(&h, "2026-10-24T23:30:00Z", "2026-10-25T02:30:00Z"),
            ["2026-10-25T00:00:00+00:00", "2026-10-25T02:00:00+00:00"]
        );
    }
}
