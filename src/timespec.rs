//! kopia's `--snapshot-time` grammar: `latest`, `oldest`, `yesterday`, `last-month`, `last-year`,
//! `[Ny-][Nm-][Nd-]ago`, or a date/time at some precision. A time selects the newest snapshot that
//! started before the end of that period (`2024-05` means "before June 2024").

use chrono::{
    DateTime, Datelike, Duration, Local, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone,
    Utc,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotTime {
    Latest,
    Oldest,
    /// Snapshots that started strictly before this instant.
    Before(DateTime<Utc>),
}

fn local_midnight(d: NaiveDate) -> DateTime<Utc> {
    let naive = d.and_hms_opt(0, 0, 0).expect("midnight exists");
    local(naive)
}

fn local(naive: NaiveDateTime) -> DateTime<Utc> {
    match Local.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        // A time inside a DST gap: kopia (Go) moves it forward by the gap; an hour is close enough.
        LocalResult::None => Local.from_utc_datetime(&naive).with_timezone(&Utc),
    }
}

pub fn parse(spec: &str, now: DateTime<Utc>) -> Result<SnapshotTime, String> {
    let today = now.with_timezone(&Local).date_naive();
    match spec {
        "" | "latest" => return Ok(SnapshotTime::Latest),
        "oldest" => return Ok(SnapshotTime::Oldest),
        "yesterday" => return Ok(SnapshotTime::Before(local_midnight(today))),
        "last-month" => {
            return Ok(SnapshotTime::Before(local_midnight(
                today.with_day(1).expect("day 1"),
            )));
        }
        "last-year" => {
            let jan1 = NaiveDate::from_ymd_opt(today.year(), 1, 1).expect("Jan 1");
            return Ok(SnapshotTime::Before(local_midnight(jan1)));
        }
        _ => {}
    }
    if let Some(rest) = spec.strip_suffix("ago") {
        let (mut years, mut months, mut days) = (0u32, 0u32, 0i64);
        for part in rest.split('-').filter(|p| !p.is_empty()) {
            let split = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            let (n, unit) = part.split_at(split);
            let n: u32 = n
                .parse()
                .map_err(|_| format!("invalid snapshot time {spec:?}"))?;
            match unit {
                "y" | "year" | "years" => years = n,
                "m" | "mo" | "month" | "months" => months = n,
                "d" | "day" | "days" => days = i64::from(n),
                _ => return Err(format!("invalid snapshot time {spec:?}")),
            }
        }
        // The end of the day that many years, months and days ago.
        let day = today
            .checked_sub_months(Months::new(years * 12 + months))
            .and_then(|d| d.checked_sub_signed(Duration::days(days - 1)))
            .ok_or_else(|| format!("snapshot time {spec:?} is out of range"))?;
        return Ok(SnapshotTime::Before(local_midnight(day)));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(spec) {
        return Ok(SnapshotTime::Before(
            t.with_timezone(&Utc) + Duration::seconds(1),
        ));
    }
    // kopia's own output format, always UTC here.
    for (format, step) in [
        ("%Y-%m-%d %H:%M:%S UTC", Duration::seconds(1)),
        ("%Y-%m-%d %H:%M:%S%.3f UTC", Duration::milliseconds(1)),
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(spec, format) {
            return Ok(SnapshotTime::Before(t.and_utc() + step));
        }
    }
    for (format, step) in [
        ("%Y-%m-%dT%H:%M:%S", Duration::seconds(1)),
        ("%Y-%m-%dT%H:%M", Duration::minutes(1)),
        ("%Y-%m-%d %H:%M:%S", Duration::seconds(1)),
        ("%Y-%m-%d %H:%M", Duration::minutes(1)),
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(spec, format) {
            return Ok(SnapshotTime::Before(local(t) + step));
        }
    }
    let parts: Vec<&str> = spec.split('-').collect();
    let num = |s: &str| s.parse::<u32>().ok();
    let date = match parts.as_slice() {
        [y, m, d] => num(y).zip(num(m)).zip(num(d)).and_then(|((y, m), d)| {
            NaiveDate::from_ymd_opt(y as i32, m, d).and_then(|d| d.succ_opt())
        }),
        [y, m] => num(y).zip(num(m)).and_then(|(y, m)| {
            NaiveDate::from_ymd_opt(y as i32, m, 1)
                .and_then(|d| d.checked_add_months(Months::new(1)))
        }),
        [y] if y.len() == 4 => num(y).and_then(|y| NaiveDate::from_ymd_opt(y as i32 + 1, 1, 1)),
        _ => None,
    };
    date.map(|d| SnapshotTime::Before(local_midnight(d)))
        .ok_or_else(|| format!("invalid snapshot time {spec:?}: use latest, oldest, 2024-05-01, \"2024-05-01 10:00:00 UTC\", RFC 3339 or 3d-ago"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn kopia_forms_select_the_end_of_their_period() {
        // Local-date forms depend on the process time zone: compare them with each other only.
        let now = at("2024-05-15T12:00:00Z");
        assert_eq!(parse("latest", now).unwrap(), SnapshotTime::Latest);
        assert_eq!(parse("oldest", now).unwrap(), SnapshotTime::Oldest);
        assert_eq!(
            parse("2024-05-01 10:00:00 UTC", now).unwrap(),
            SnapshotTime::Before(at("2024-05-01T10:00:01Z"))
        );
        assert_eq!(
            parse("2024-05-01 10:00:00.250 UTC", now).unwrap(),
            SnapshotTime::Before(at("2024-05-01T10:00:00.251Z"))
        );
        assert_eq!(
            parse("2024-05-01T10:00:00Z", now).unwrap(),
            SnapshotTime::Before(at("2024-05-01T10:00:01Z"))
        );
        let month = parse("2024-05", now).unwrap();
        let day = parse("2024-5-31", now).unwrap();
        assert_eq!(month, day, "the end of May either way");
        let year = parse("2024", now).unwrap();
        assert_eq!(year, parse("2024-12-31", now).unwrap());
        assert_eq!(
            parse("1d-ago", now).unwrap(),
            parse("yesterday", now).unwrap()
        );
        assert_eq!(
            parse("1m-1d-ago", now).unwrap(),
            parse("2024-04-14", now).unwrap()
        );
        assert!(parse("next tuesday", now).is_err());
    }
}
