package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sampler watches named processes in /proc: their resident memory (the
// peak of the samples) and the CPU time they used while it ran. Several
// processes may share a name (PostgreSQL backends): their figures add up.
type sampler struct {
	names []string
	mu    sync.Mutex
	peak  map[string]int64            // name -> peak summed RSS, bytes
	first map[string]map[int]int64    // name -> pid -> CPU ticks when first seen
	last  map[string]map[int]int64    // name -> pid -> CPU ticks when last seen
	pids  map[string]map[int]struct{} // name -> pids seen
	from  time.Time
	until time.Time
	done  chan struct{}
	once  sync.Once
}

func newSampler(names []string) *sampler {
	s := &sampler{names: names, peak: map[string]int64{}, first: map[string]map[int]int64{},
		last: map[string]map[int]int64{}, pids: map[string]map[int]struct{}{}, done: make(chan struct{})}
	for _, n := range names {
		s.first[n], s.last[n], s.pids[n] = map[int]int64{}, map[int]int64{}, map[int]struct{}{}
	}
	return s
}

func (s *sampler) run(ctx context.Context, every time.Duration) {
	s.from = time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.sample()
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-t.C:
		}
	}
}

func (s *sampler) stop() {
	s.once.Do(func() {
		s.sample()
		s.until = time.Now()
		close(s.done)
	})
}

var pageSize = int64(os.Getpagesize())

func (s *sampler) sample() {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	rss := map[string]int64{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, dir := range dirs {
		comm, err := os.ReadFile(dir + "/comm")
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if !slices.Contains(s.names, name) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		stat, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue
		}
		// Fields after the ")" that closes the command name: utime is the
		// 12th, stime the 13th, rss (pages) the 22nd.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 22 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		pages, _ := strconv.ParseInt(f[21], 10, 64)
		if _, seen := s.first[name][pid]; !seen {
			s.first[name][pid] = ut + st
		}
		s.last[name][pid] = ut + st
		s.pids[name][pid] = struct{}{}
		rss[name] += pages * pageSize
	}
	for n, v := range rss {
		if v > s.peak[n] {
			s.peak[n] = v
		}
	}
}

// ProcessUsage is what one named process (or group) used during the run.
type ProcessUsage struct {
	Name      string  `json:"name"`
	Processes int     `json:"processes"`
	PeakRSSMB float64 `json:"peak_rss_mb"`
	CPUSec    float64 `json:"cpu_seconds"`
	// CPUPercent is of one core, averaged over the run (200 = both cores).
	CPUPercent float64 `json:"cpu_percent"`
}

const ticksPerSecond = 100 // USER_HZ on Linux

func (s *sampler) report() []ProcessUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	wall := s.until.Sub(s.from).Seconds()
	var out []ProcessUsage
	for _, n := range s.names {
		if len(s.pids[n]) == 0 {
			continue
		}
		var ticks int64
		for pid, last := range s.last[n] {
			ticks += last - s.first[n][pid]
		}
		u := ProcessUsage{Name: n, Processes: len(s.pids[n]), PeakRSSMB: float64(s.peak[n]) / (1 << 20),
			CPUSec: float64(ticks) / ticksPerSecond}
		if wall > 0 {
			u.CPUPercent = 100 * u.CPUSec / wall
		}
		out = append(out, u)
	}
	return out
}
