//! RESULT lines and the JSON results file.
//!
//! Every figure is printed as one machine-readable line,
//! `RESULT <scenario> <figure>=<value><unit> ref=<reference>:<value><unit> ratio=<figure/ref>`,
//! and collected into `target/bench/<scenario-group>.json`. A figure whose reference
//! could not be measured (a peer tool missing) prints `ref=none` and no ratio. Also the
//! quiet start every measured phase gets ([`quiesce`]).

use serde_json::json;
use std::path::PathBuf;

/// One measured figure and what it is compared with.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Scenario name, e.g. `append-1p-1k-group`.
    pub scenario: String,
    /// Figure name, e.g. `throughput`.
    pub name: String,
    /// Measured value.
    pub value: f64,
    /// Unit, e.g. `MB/s`.
    pub unit: String,
    /// Reference name and value (same unit), if measured.
    pub reference: Option<(String, f64)>,
}

impl Figure {
    /// The RESULT line.
    pub fn line(&self) -> String {
        let value = format_value(self.value);
        match &self.reference {
            Some((name, reference)) if *reference > 0.0 => format!(
                "RESULT {} {}={value}{} ref={name}:{}{} ratio={:.2}",
                self.scenario,
                self.name,
                self.unit,
                format_value(*reference),
                self.unit,
                self.value / reference
            ),
            _ => format!("RESULT {} {}={value}{} ref=none", self.scenario, self.name, self.unit),
        }
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Flushes dirty pages and lets the disk settle, so one phase's writeback does not
/// land in the next phase's figure. Every measured phase after a write-heavy one starts
/// with it: on the development VM a paced run started right after a full-speed one
/// saw stalls of ~100 ms every 2 s for its first seconds (docs/ENGINE.md).
pub fn quiesce() {
    std::process::Command::new("sync").status().ok();
    std::thread::sleep(std::time::Duration::from_millis(1000));
}

/// Where results go: `$CARGO_TARGET_DIR/bench` or `target/bench`.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from).join("bench")
}

/// Writes `figures` to `target/bench/<group>.json`.
pub fn write_json(group: &str, figures: &[Figure]) -> std::io::Result<PathBuf> {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir)?;
    let rows: Vec<_> = figures
        .iter()
        .map(|f| {
            json!({
                "scenario": f.scenario, "figure": f.name, "value": f.value, "unit": f.unit,
                "reference": f.reference.as_ref().map(|(n, _)| n.clone()),
                "reference_value": f.reference.as_ref().map(|(_, v)| *v),
                "ratio": f.reference.as_ref().filter(|(_, v)| *v > 0.0).map(|(_, v)| f.value / v),
            })
        })
        .collect();
    let path = dir.join(format!("{group}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
    Ok(path)
}

/// Draws the ratio of every figure that has a reference as a horizontal bar chart
/// (`target/bench/<group>.svg`); a dashed line marks parity with the reference.
pub fn write_svg(group: &str, figures: &[Figure]) -> std::io::Result<PathBuf> {
    const ROW_PX: usize = 22;
    const LABEL_PX: usize = 420;
    const BAR_PX: f64 = 360.0;
    let rows: Vec<(String, f64)> = figures
        .iter()
        .filter_map(|f| {
            let (name, reference) = f.reference.as_ref().filter(|(_, v)| *v > 0.0)?;
            Some((format!("{} {} vs {name}", f.scenario, f.name), f.value / reference))
        })
        .collect();
    let scale = rows.iter().map(|(_, r)| *r).fold(1.2_f64, f64::max);
    let height = ROW_PX * (rows.len() + 2);
    let width = LABEL_PX + BAR_PX as usize + 80;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">\n\
         <text x=\"4\" y=\"14\">corelog-bench {group}: figure / reference</text>\n"
    );
    for (i, (label, ratio)) in rows.iter().enumerate() {
        let y = ROW_PX * (i + 1);
        let bar = BAR_PX * ratio / scale;
        let color = if *ratio >= 1.0 { "#2a7" } else { "#37c" };
        svg.push_str(&format!(
            "<text x=\"4\" y=\"{}\">{label}</text><rect x=\"{LABEL_PX}\" y=\"{}\" width=\"{bar:.1}\" height=\"{}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{ratio:.2}</text>\n",
            y + 15,
            y + 4,
            ROW_PX - 6,
            LABEL_PX as f64 + bar + 4.0,
            y + 15
        ));
    }
    let parity = LABEL_PX as f64 + BAR_PX / scale;
    svg.push_str(&format!(
        "<line x1=\"{parity:.1}\" y1=\"{ROW_PX}\" x2=\"{parity:.1}\" y2=\"{}\" stroke=\"#c33\" stroke-dasharray=\"4\"/>\n</svg>\n",
        height - ROW_PX / 2
    ));
    let path = bench_dir().join(format!("{group}.svg"));
    std::fs::create_dir_all(bench_dir())?;
    std::fs::write(&path, svg)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_has_the_documented_shape() {
        let figure = Figure {
            scenario: "append-1p".into(),
            name: "throughput".into(),
            value: 1450.0,
            unit: "MB/s".into(),
            reference: Some(("fio-seqwrite".into(), 2900.0)),
        };
        assert_eq!(
            figure.line(),
            "RESULT append-1p throughput=1450MB/s ref=fio-seqwrite:2900MB/s ratio=0.50"
        );
        let alone = Figure { reference: None, ..figure };
        assert_eq!(alone.line(), "RESULT append-1p throughput=1450MB/s ref=none");
    }
}
