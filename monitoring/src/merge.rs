//! Merging Prometheus text expositions (format 0.0.4): the serve process answers one scrape
//! with its own metrics and those of its HSM node children, so a family that several
//! processes export (every node's `sealgate_hsm_sessions`) must appear once, with one
//! `# HELP` and `# TYPE` and the samples of all (told apart by their `hsm_id` label).

use std::collections::BTreeMap;

/// One metric family: its comment lines and samples, in order of first appearance.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// The family a sample line belongs to: its name, less a histogram's or summary's suffix when
/// `known` has the base name.
fn family_of<'a>(name: &'a str, known: &BTreeMap<String, Family>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && known.contains_key(base)
        {
            return base;
        }
    }
    name
}

/// The family called `name`, added (and its place in `order` recorded) if new.
fn family_entry<'f>(
    order: &mut Vec<String>,
    families: &'f mut BTreeMap<String, Family>,
    name: &str,
) -> &'f mut Family {
    if !families.contains_key(name) {
        order.push(name.to_owned());
    }
    families.entry(name.to_owned()).or_default()
}

/// Merges `texts` into one exposition: families in order of first appearance, each with the
/// first `# HELP` and `# TYPE` seen for it and every sample of every text. Blank lines and
/// other comments are dropped.
pub fn merge<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for text in texts {
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if keyword != "HELP" && keyword != "TYPE" {
                    continue;
                }
                let family = family_entry(&mut order, &mut families, name);
                {
                    let slot = if keyword == "HELP" {
                        &mut family.help
                    } else {
                        &mut family.kind
                    };
                    if slot.is_none() {
                        *slot = Some(line.to_owned());
                    }
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = family_of(line.get(..end).unwrap_or(line), &families).to_owned();
            family_entry(&mut order, &mut families, &name)
                .samples
                .push(line.to_owned());
        }
    }
    let mut out = String::new();
    for name in order {
        let Some(family) = families.remove(&name) else {
            continue;
        };
        for line in family.help.iter().chain(family.kind.iter()) {
            out.push_str(line);
            out.push('\n');
        }
        for sample in family.samples {
            out.push_str(&sample);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_several_processes_are_merged_once() {
        let a = "# HELP up_total requests\n# TYPE up_total counter\nup_total{hsm_id=\"1\"} 3\n\n\
                 # HELP t_seconds time\n# TYPE t_seconds histogram\n\
                 t_seconds_bucket{le=\"1\"} 1\nt_seconds_sum 0.5\nt_seconds_count 1\n";
        let b = "# HELP up_total requests\n# TYPE up_total counter\nup_total{hsm_id=\"2\"} 4\n";
        let merged = merge([a, b]);
        assert_eq!(merged.matches("# TYPE up_total counter").count(), 1);
        assert_eq!(merged.matches("# HELP up_total").count(), 1);
        assert!(merged.contains("up_total{hsm_id=\"1\"} 3\nup_total{hsm_id=\"2\"} 4\n"));
        let hist = merged
            .find("# TYPE t_seconds histogram")
            .expect("histogram family");
        assert!(merged[hist..].contains("t_seconds_count 1"));
        assert!(
            merged.find("up_total{hsm_id=\"2\"}") < Some(hist),
            "a family's samples stay together"
        );
    }
}
