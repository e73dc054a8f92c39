//! `pretext compare` and `pretext report` from the command line: run (or continue) a comparison
//! and print its table and where the report is.

use super::{report, run, CompareRequest};
use crate::commands::cli::{CompareArgs, ReportArgs};
use crate::commands::command_line;
use crate::platform::device;
use crate::Result;

pub fn command(a: CompareArgs) -> Result<()> {
    let outcome = run(&CompareRequest {
        device: device::parse(&a.device)?,
        data: a.data,
        tasks: a.tasks,
        labels_per_class: a.labels_per_class,
        protocols: a.protocols,
        budget: a.budget,
        minutes: a.minutes,
        seeds: a.seeds,
        stages: a.stages,
        pretrain_sets: a.set,
        transfer_sets: a.transfer_set,
        out: a.out,
        device_name: a.device,
        command: command_line(),
        quiet: a.quiet,
    })?;
    for (task, why) in &outcome.skipped {
        println!("skipped {task}: {why}");
    }
    if outcome.interrupted {
        println!("interrupted: rerun the same command to continue");
    }
    let md = std::fs::read_to_string(&outcome.report_md).unwrap_or_default();
    if let Some(table) = md.split("## All numbers").nth(1) {
        let table: String = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n");
        println!("{table}");
    }
    println!(
        "{} of {} cells computed in this run; report: {} and {}",
        outcome.cells_run,
        outcome.cells_total,
        outcome.report_html.display(),
        outcome.report_md.display()
    );
    Ok(())
}

pub fn report_command(a: ReportArgs) -> Result<()> {
    let (html, md) = report::build(&a.out)?;
    println!("report: {} and {}", html.display(), md.display());
    Ok(())
}
