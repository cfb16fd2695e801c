#!/usr/bin/python3
# Parse job descriptions with ARC's own library (python3-nordugrid-arc) and
# print the fields gridship's JobSpec carries, as JSON.
# stdin: [{"text": "...", "lang": "nordugrid:xrsl"|"emies:adl"|"", "dialect": ""}, ...]
# stdout: [{"ok": bool, "error": "...", "jobs": [{field: value}]}, ...]
import json
import sys

import arc

EE = {arc.SlotRequirementType.EE_TRUE: True, arc.SlotRequirementType.EE_FALSE: False}
STATES = {"PREPARING": "preparing", "INLRMS": "queued", "FINISHING": "finishing", "FINISHED": "finished"}


def opt(v):
    return None if v in ("", -1) else v


def key(j):
    a, r, d = j.Application, j.Resources, j.DataStaging
    return {
        "executable": a.Executable.Path,
        "arguments": list(a.Executable.Argument),
        "stdin": opt(a.Input), "stdout": opt(a.Output), "stderr": opt(a.Error),
        "input_files": [[f.Name, next((u.str() for u in f.Sources if u.Protocol() != "file"), None), bool(f.IsExecutable)]
                        for f in d.InputFiles],
        "output_files": [[f.Name, next((u.str() for u in f.Targets if u.Protocol() != "file"), None)]
                         for f in d.OutputFiles],
        "environment": [list(p) for p in a.Environment],
        "walltime_s": opt(r.TotalWallTime.range.max),
        "cputime_s": opt(r.TotalCPUTime.range.max),
        "memory_mb": opt(r.IndividualPhysicalMemory.max),
        "disk_mb": opt(r.DiskSpaceRequirement.DiskSpace.max),
        "count": opt(r.SlotRequirement.NumberOfSlots),
        "count_per_node": opt(r.SlotRequirement.SlotsPerHost),
        "exclusive": EE.get(r.SlotRequirement.ExclusiveExecution),
        "queue": opt(r.QueueName),
        "runtime_environments": [[str(s), list(s.getOptions())] for s in r.RunTimeEnvironment.getSoftwareList()],
        "job_name": opt(j.Identification.JobName),
        "notify": [[n.Email, [STATES.get(s, s) for s in n.States]] for n in a.Notification],
        "priority": opt(a.Priority),
        "rerun": opt(a.Rerun),
        "gmlog": opt(a.LogDir),
        # Every source as ARC reads it, local (file://) ones included.
        "input_urls": [[f.Name, [u.str() for u in f.Sources]] for f in d.InputFiles],
    }


def main():
    out = []
    for item in json.load(sys.stdin):
        jl = arc.JobDescriptionList()
        res = arc.JobDescription.Parse(item["text"], jl, item.get("lang", ""), item.get("dialect", ""))
        ok = bool(res)
        out.append({"ok": ok, "error": "" if ok else res.str(),
                    "jobs": [key(jl[i]) for i in range(jl.size())] if ok else []})
    json.dump(out, sys.stdout)


main()
