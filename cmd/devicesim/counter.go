package main

import (
	"encoding/json"
	"strconv"

	"github.com/subgate/subgate/southbound/frame"
)

// counterProperty is the property that -counter adds to every report: the
// device's report number, 1 for its first report and one more for each
// report after it. The platform side (iotdasim's GET /api/stats) checks
// loss, duplicates and order per device with it.
const counterProperty = "n"

// counterReports builds numbered property reports. The JSON around the
// number is built once and shared read-only by every device; each report
// costs one allocation of its services.
type counterReports struct {
	prefix []byte // up to and including `"n":`
	suffix []byte // from the comma after the number to the end
}

// newCounterReports prepares reports of reportService whose properties
// are the counter and value, a string that needs no JSON escaping (see
// payload).
func newCounterReports(value string) *counterReports {
	return &counterReports{
		prefix: []byte(`[{"service_id":"` + reportService + `","properties":{"` + counterProperty + `":`),
		suffix: []byte(`,"value":"` + value + `"}}]`),
	}
}

// services returns the services of report number n.
func (c *counterReports) services(n uint64) json.RawMessage {
	b := make([]byte, 0, len(c.prefix)+20+len(c.suffix))
	b = append(b, c.prefix...)
	b = strconv.AppendUint(b, n, 10)
	return append(b, c.suffix...)
}

// deviceCounter numbers the reports of one device. It is used only by the
// device's sender goroutine.
type deviceCounter struct {
	reports *counterReports
	n       uint64 // number of the last report sent
}

// next turns the shared report f into the device's next numbered report.
// A report that is not sent after all (a full ack window) must not take a
// number, so call next only once the report will be written.
func (d *deviceCounter) next(f frame.Frame) frame.Frame {
	d.n++
	f.Services = d.reports.services(d.n)
	return f
}
