package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"time"
)

// series is one line of a panel: y per sample, NaN where unknown.
type series struct {
	name  string
	color color.RGBA
	y     []float64
}

// panel is one chart of the plot, sharing the x axis (elapsed time) with
// the others.
type panel struct {
	title string
	lines []series
}

var (
	colBlue   = color.RGBA{31, 119, 180, 255}
	colOrange = color.RGBA{255, 127, 14, 255}
	colGreen  = color.RGBA{44, 160, 44, 255}
	colRed    = color.RGBA{214, 39, 40, 255}
	colGrid   = color.RGBA{225, 225, 225, 255}
	colAxis   = color.RGBA{60, 60, 60, 255}
	colMark   = color.RGBA{250, 200, 200, 255}
)

// soakPanels turns the record into the plot's panels.
func soakPanels(ss []sample) []panel {
	col := func(get func(sample) float64) []float64 {
		out := make([]float64, len(ss))
		for i, s := range ss {
			out[i] = get(s)
		}
		return out
	}
	mib := func(v int64) float64 {
		if v < 0 {
			return math.NaN()
		}
		return float64(v) / (1 << 20)
	}
	num := func(v int64) float64 {
		if v < 0 {
			return math.NaN()
		}
		return float64(v)
	}
	lag := func(g int) func(sample) float64 {
		return func(s sample) float64 {
			if s.Lag[g].N == 0 {
				return math.NaN()
			}
			return float64(s.Lag[g].P99) / float64(time.Millisecond)
		}
	}
	return []panel{
		{"memory (MiB)", []series{
			{"RSS", colBlue, col(func(s sample) float64 { return mib(s.RSS) })},
			{"RSS anonymous", colGreen, col(func(s sample) float64 { return mib(s.RSSAnon) })},
			{"Go heap in use", colOrange, col(func(s sample) float64 { return mib(s.HeapInuse) })},
			{"Go heap live", colRed, col(func(s sample) float64 { return mib(s.HeapLive) })},
		}},
		{"goroutines", []series{{"goroutines", colBlue, col(func(s sample) float64 { return num(s.Goroutines) })}}},
		{"open files", []series{{"open fds", colBlue, col(func(s sample) float64 { return num(s.OpenFDs) })}}},
		{"stream lag p99 (ms)", []series{
			{"machine", colBlue, col(lag(groupMachine))},
			{"fleet", colOrange, col(lag(groupFleet))},
			{"fleet conflated", colGreen, col(lag(groupConflate))},
		}},
		{"events/s acknowledged", []series{
			{"acked/s", colBlue, col(func(s sample) float64 { return s.AckedPerS })},
			{"requests retried/s", colRed, col(retriedPerS(ss))},
		}},
	}
}

func retriedPerS(ss []sample) func(sample) float64 {
	prev := map[time.Duration]sample{}
	for i, s := range ss {
		if i > 0 {
			prev[s.Elapsed] = ss[i-1]
		}
	}
	return func(s sample) float64 {
		p, ok := prev[s.Elapsed]
		if !ok || s.Elapsed <= p.Elapsed {
			return math.NaN()
		}
		return float64(s.Retries-p.Retries) / (s.Elapsed - p.Elapsed).Seconds()
	}
}

// Plot geometry.
const (
	plotScale   = 2   // font scale
	panelH      = 220 // height of one panel, title and axes included
	marginLeft  = 110
	marginRight = 30
	marginTop   = 60
	axisBottom  = 40 // x tick labels under the last panel
)

// renderPlot draws the panels stacked, x = elapsed time, and marks the
// moments in marks (server restarts, faults) with vertical lines.
func renderPlot(w io.Writer, title string, x []time.Duration, ps []panel, marks []time.Duration, width int) error {
	h := marginTop + len(ps)*panelH + axisBottom
	img := image.NewRGBA(image.Rect(0, 0, width, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	drawText(img, marginLeft, 16, title, plotScale, colAxis)

	xmax := time.Second
	if len(x) > 0 {
		xmax = max(xmax, x[len(x)-1])
	}
	plotW := width - marginLeft - marginRight
	px := func(d time.Duration) int { return marginLeft + int(float64(plotW)*float64(d)/float64(xmax)) }
	xTicks := niceTicks(0, xmax.Minutes(), 8)

	for i, p := range ps {
		top := marginTop + i*panelH + 24
		bottom := marginTop + (i+1)*panelH - 20
		drawText(img, marginLeft, top-22, p.title, plotScale, colAxis)
		// Legend, right-aligned on the title line.
		lx := width - marginRight
		for j := len(p.lines) - 1; j >= 0; j-- {
			l := p.lines[j]
			lx -= textWidth(l.name, plotScale) + 34
			fillRect(img, lx, top-16, lx+20, top-12, l.color)
			drawText(img, lx+26, top-22, l.name, plotScale, colAxis)
		}

		lo, hi := math.Inf(1), math.Inf(-1)
		for _, l := range p.lines {
			for _, v := range l.y {
				if !math.IsNaN(v) {
					lo, hi = min(lo, v), max(hi, v)
				}
			}
		}
		if math.IsInf(lo, 1) {
			lo, hi = 0, 1
		}
		lo = min(lo, 0)
		if hi <= lo {
			hi = lo + 1
		}
		yTicks := niceTicks(lo, hi, 4)
		lo, hi = min(lo, yTicks[0]), max(hi, yTicks[len(yTicks)-1])
		py := func(v float64) int { return bottom - int(float64(bottom-top)*(v-lo)/(hi-lo)) }

		for _, t := range yTicks {
			y := py(t)
			hline(img, marginLeft, width-marginRight, y, colGrid)
			s := tickLabel(t)
			drawText(img, marginLeft-10-textWidth(s, plotScale), y-glyphH*plotScale/2, s, plotScale, colAxis)
		}
		for _, t := range xTicks {
			vline(img, px(time.Duration(t*float64(time.Minute))), top, bottom, colGrid)
		}
		for _, m := range marks {
			vline(img, px(m), top, bottom, colMark)
		}
		hline(img, marginLeft, width-marginRight, bottom, colAxis)
		vline(img, marginLeft, top, bottom, colAxis)

		for _, l := range p.lines {
			var prev image.Point
			have := false
			for k, v := range l.y {
				if k >= len(x) || math.IsNaN(v) {
					have = false
					continue
				}
				pt := image.Pt(px(x[k]), py(v))
				if have {
					line(img, prev, pt, l.color)
				} else {
					fillRect(img, pt.X-1, pt.Y-1, pt.X+2, pt.Y+2, l.color)
				}
				prev, have = pt, true
			}
		}
	}
	// x tick labels and axis title under the last panel.
	base := marginTop + len(ps)*panelH - 14
	for _, t := range xTicks {
		s := tickLabel(t)
		drawText(img, px(time.Duration(t*float64(time.Minute)))-textWidth(s, plotScale)/2, base, s, plotScale, colAxis)
	}
	xl := "elapsed (min)"
	drawText(img, marginLeft+plotW/2-textWidth(xl, plotScale)/2, base+22, xl, plotScale, colAxis)

	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("encoding png: %w", err)
	}
	return nil
}

// niceTicks returns about n round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for t := math.Floor(lo/step) * step; t <= hi+step*1e-9; t += step {
		out = append(out, t)
	}
	if out[len(out)-1] < hi {
		out = append(out, out[len(out)-1]+step)
	}
	return out
}

// tickLabel prints a tick value briefly: 1500 → 1.5K, 2000000 → 2M.
func tickLabel(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return trimFloat(v/1e6) + "M"
	case a >= 1e4:
		return trimFloat(v/1e3) + "K"
	default:
		return trimFloat(v)
	}
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	for s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	if s == "-0" {
		s = "0"
	}
	return s
}

func fillRect(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), image.NewUniform(c), image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) { fillRect(img, x0, y, x1+1, y+1, c) }

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) { fillRect(img, x, y0, x+1, y1+1, c) }

// line draws a two-pixel-thick segment (Bresenham).
func line(img *image.RGBA, a, b image.Point, c color.Color) {
	dx, dy := abs(b.X-a.X), -abs(b.Y-a.Y)
	sx, sy := sign(b.X-a.X), sign(b.Y-a.Y)
	err := dx + dy
	for {
		img.Set(a.X, a.Y, c)
		img.Set(a.X, a.Y+1, c)
		if a == b {
			return
		}
		e2 := 2 * err
		if e2 >= dy {
			err += dy
			a.X += sx
		}
		if e2 <= dx {
			err += dx
			a.Y += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
