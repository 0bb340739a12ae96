#!/usr/bin/env bash
# `patrol verify` on a 3-request suite vs `hurl --test` on the same three requests against the
# local shop, timed by hyperfine in the same run (medians in the exported JSON).
source "$(dirname "$0")/common.sh"
command -v hyperfine > /dev/null || { echo "hyperfine is needed: apt-get install hyperfine"; exit 2; }
command -v hurl > /dev/null || { echo "hurl is needed: cargo install hurl@8.0.1 --locked"; exit 2; }
machine_notes
echo "$(hurl --version | head -1)"
cat > "$WORK/three.yaml" <<YAML
probes:
  - name: three
    steps:
      - name: health
        request: { url: "$SHOP/api/health" }
        assert: [ status == 200, 'jsonpath "\$.status" == "ok"' ]
      - name: products
        request: { url: "$SHOP/api/products?limit=10" }
        assert: [ status == 200, 'jsonpath "\$.products" count == 10' ]
      - name: search
        request: { url: "$SHOP/api/search?q=laptop" }
        assert: [ status == 200, 'jsonpath "\$.total" >= 1' ]
YAML
cat > "$WORK/three.hurl" <<HURL
GET $SHOP/api/health
HTTP 200
[Asserts]
jsonpath "\$.status" == "ok"

GET $SHOP/api/products?limit=10
HTTP 200
[Asserts]
jsonpath "\$.products" count == 10

GET $SHOP/api/search?q=laptop
HTTP 200
[Asserts]
jsonpath "\$.total" >= 1
HURL
"$PATROL" verify --config "$WORK/three.yaml" > /dev/null
hurl --test "$WORK/three.hurl" > /dev/null 2>&1
hyperfine -N --warmup 10 --runs "${RUNS:-200}" --export-json "$WORK/hf.json" \
  -n patrol "$PATROL verify --config $WORK/three.yaml" \
  -n hurl "hurl --test $WORK/three.hurl"
python3 - "$WORK/hf.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
p, h = r["patrol"]["median"] * 1000, r["hurl"]["median"] * 1000
cpu = lambda x: (x["user"] + x["system"]) * 1000
print(f"median wall: patrol {p:.2f} ms, hurl {h:.2f} ms, patrol/hurl = {p / h:.2f}; "
      f"mean CPU (user+sys): patrol {cpu(r['patrol']):.1f} ms, hurl {cpu(r['hurl']):.1f} ms")
PY
