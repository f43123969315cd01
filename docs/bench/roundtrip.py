#!/usr/bin/env python3
"""Sequential REST -> agent -> stored-result round trips over one keep-alive connection.

Usage: roundtrip.py HOST PORT API_KEY AGENT_ID COUNT. Prints p50/p90/p99/max in ms.
"""
import http.client, json, sys, time
host, port, token, agent, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
c = http.client.HTTPConnection(host, port)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
body = json.dumps({"command": "ping"})
lat = []
for i in range(n):
    t = time.perf_counter()
    c.request("POST", f"/api/agents/{agent}/command", body, h)
    r = c.getresponse(); data = r.read()
    assert r.status == 200, data
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"n={n} p50={q(.5):.3f}ms p90={q(.9):.3f}ms p99={q(.99):.3f}ms max={lat[-1]:.3f}ms")
