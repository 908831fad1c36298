# Stage 8: memory report (predicted vs measured), summary and plots, rendered from the stages' declared summaries
# and every job's memory record: deleting Zarr chunks or checkpoints does not stop them from being regenerated
# (see README, "Reports from frozen artifacts").


rule build_reports:
    input:
        prompts=PROMPTS,
        prompts_summary=PROMPTS_SUMMARY,
        model=MODEL_CARD,
        weights=WEIGHTS,
        meta=WEIGHTS_META,
        rm=RM_METRICS,
        grpo=runs(GRPO_METRICS),
        draws=runs(GRPO_DRAWS),
        comparison=COMPARISON,
        memory=report_memory,
        bench=report_bench,
    output:
        **{
            name: report(
                f"{REPORTS}/{png}", caption=f"../report/{PLOT_CAPTIONS.get(name, 'plots.rst')}", category="Plots"
            )
            for name, png in PLOTS.items()
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
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        **REPORT_PARAMS,
    script:
        "../scripts/reports.py"
