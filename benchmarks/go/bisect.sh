#!/bin/bash
# A Go build-and-bisect, as a task's solve.sh would do it: a module with two packages, 24 commits,
# a regression at commit 17, `git bisect run go test ./...` building and testing each step (the
# test suite keeps 4 goroutines busy, as a real suite on a multi-core host would). GO_WORK sizes
# the suite's CPU work (loop iterations per goroutine). Prints the first bad commit.
set -e
export HOME=${HOME:-/root} GOFLAGS=-mod=mod GOCACHE=/tmp/gocache-$$ GOPATH=/tmp/gopath-$$
w=$(mktemp -d); cd "$w"
git init -q . && git config user.email a@b && git config user.name a
cat > go.mod <<'M'
module example.com/calc
go 1.19
M
mkdir -p stats parse
for i in $(seq 1 24); do
  bug=0; [ "$i" -ge 17 ] && bug=1
  cat > stats/stats.go <<G
package stats

import "sort"

// Rev $i
func Median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 || $bug == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
G
  cat > parse/parse.go <<G
package parse

import ("strconv"; "strings")

// Rev $i
func Floats(line string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Fields(line) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil { return nil, err }
		out = append(out, v)
	}
	return out, nil
}
G
  cat > stats/stats_test.go <<G
package stats

import ("sync"; "testing")

func TestMedian(t *testing.T) {
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 { t.Fatalf("median %v", m) }
}

func TestHeavy(t *testing.T) { // CPU work on all cores, as a real suite would
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() { defer wg.Done(); s := 0.0; for i := 0; i < ${GO_WORK:-300000000}; i++ { s += float64(i%7) }; _ = s }()
	}
	wg.Wait()
}
G
  git add -A && git commit -qm "rev $i"
done
git bisect start HEAD HEAD~23 >/dev/null
git bisect run go test ./... > /tmp/bisect.log 2>&1 || true; grep -m1 "is the first bad commit" /tmp/bisect.log || tail -20 /tmp/bisect.log
git bisect reset >/dev/null 2>&1
rm -rf "$w" /tmp/gocache-$$ /tmp/gopath-$$
