//! Probe schedules: `{ cron: "0 */5 * * * *" }` (six fields with seconds, UTC unless `tz`) or
//! `{ every: 30s }`. Cron expressions are checked field by field so errors point at the column.

use std::str::FromStr;
use std::time::Duration;

/// When a probe runs on its own.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression with seconds.
    Cron {
        /// The expression as written.
        expr: String,
        /// The parsed schedule.
        schedule: Box<cron::Schedule>,
    },
    /// A fixed interval.
    Every(Duration),
}

impl Schedule {
    /// A short human description: `every 30s`, `cron 0 */5 * * * *`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron { expr, .. } => format!("cron {expr}"),
            Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        }
    }
}

/// A cron problem: byte offset and width of the bad field, message, help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    /// Byte offset of the offending field (0 for the whole expression).
    pub offset: usize,
    /// Width to underline.
    pub width: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

const FIELD_NAMES: [&str; 7] = [
    "seconds",
    "minutes",
    "hours",
    "day of month",
    "month",
    "day of week",
    "year",
];

/// Parses a cron expression, naming the field that is wrong.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, CronError> {
    let fields: Vec<(usize, &str)> = expr
        .split_whitespace()
        .map(|f| (f.as_ptr() as usize - expr.as_ptr() as usize, f))
        .collect();
    if !(6..=7).contains(&fields.len()) {
        let help = if fields.len() == 5 {
            format!(
                "Patrol's cron has a seconds field first: `0 {}`",
                fields.iter().map(|f| f.1).collect::<Vec<_>>().join(" ")
            )
        } else {
            "write six fields: seconds minutes hours day-of-month month day-of-week, e.g. `0 */5 * * * *`".into()
        };
        return Err(CronError {
            offset: 0,
            width: expr.len().max(1),
            message: format!(
                "cron expression needs 6 fields (7 with a year), found {}",
                fields.len()
            ),
            help,
        });
    }
    match cron::Schedule::from_str(expr) {
        Ok(s) => Ok(s),
        Err(whole) => {
            // Find the field that breaks it: the expression parses once that field is `*`.
            for (i, (offset, field)) in fields.iter().enumerate() {
                let probe: Vec<&str> = fields
                    .iter()
                    .enumerate()
                    .map(|(j, f)| if i == j { "*" } else { f.1 })
                    .collect();
                if cron::Schedule::from_str(&probe.join(" ")).is_ok() {
                    let help = match i {
                        5 => "day of week is 1-7 (1 = Sunday) or SUN-SAT, e.g. MON-FRI".to_string(),
                        4 => "month is 1-12 or JAN-DEC".to_string(),
                        3 => "day of month is 1-31".to_string(),
                        2 => "hours are 0-23".to_string(),
                        _ => format!("{} are 0-59, e.g. `*/15` or `0,30`", FIELD_NAMES[i]),
                    };
                    return Err(CronError {
                        offset: *offset,
                        width: field.len(),
                        message: format!(
                            "invalid {} field `{field}` in cron expression",
                            FIELD_NAMES[i]
                        ),
                        help,
                    });
                }
            }
            Err(CronError {
                offset: 0,
                width: expr.len().max(1),
                message: format!("invalid cron expression: {whole}"),
                help: "write six fields: seconds minutes hours day-of-month month day-of-week"
                    .into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_expressions_parse() {
        assert!(parse_cron("0 */5 * * * *").is_ok());
        assert!(parse_cron("*/10 * * * * MON-FRI").is_ok());
    }

    #[test]
    fn the_bad_field_is_named_with_its_offset() {
        let e = parse_cron("0 */5 25 * * *").expect_err("hour 25");
        assert_eq!((e.offset, e.width), (6, 2));
        assert!(e.message.contains("hours field `25`"), "{}", e.message);
        let e = parse_cron("0 61 * * * *").expect_err("minute 61");
        assert_eq!(e.offset, 2);
    }

    #[test]
    fn five_fields_suggest_adding_seconds() {
        let e = parse_cron("*/5 * * * *").expect_err("five fields");
        assert!(e.help.contains("`0 */5 * * * *`"), "{}", e.help);
    }
}
