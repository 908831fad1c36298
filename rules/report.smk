# Stage 8: memory report (predicted vs measured), summary and plots, rendered from the stages' declared summaries
# and every job's memory record: deleting Zarr chunks or checkpoints does not stop them from being regenerated
# (see README, "Reports from frozen artifacts").


rule build_reports:
    input:
        prompts_summary=PROMPTS_SUMMARY,
        model=MODEL_CARD,
        weights=WEIGHTS,
        meta=WEIGHTS_META,
        rm=RM_METRICS,
        grpo=runs(GRPO_METRICS),
        grpo_summary=runs(GRPO_SUMMARY),
        draws=runs(GRPO_DRAWS),
        comparison=COMPARISON,
        memory=report_files("memory"),
        bench=report_files("bench"),
        embed_records=EMBED_RECORDS,
    output:
        **{
            name: report(f"{REPORTS}/{png}", caption=f"../report/{caption}", category="Plots")
            for name, (png, caption) in PLOTS.items()
        },
        summary=report(SUMMARY, caption="../report/summary.rst", category="Summary"),
        memory_md=report(f"{REPORTS}/memory.md", caption="../report/memory.rst", category="Memory"),
        memory_json=f"{REPORTS}/memory.json",
    log:
        f"{LOGS}/reports.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **resources(2000, 10),
    params:
        **P.report(config, RUNS),
    script:
        "../scripts/reports.py"
