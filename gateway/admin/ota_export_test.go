package admin

import "net/http"

// OTAHandler serves only the OTA routes of s, behind the same token check
// and in-flight bound as every API route.
func OTAHandler(s *Server) http.Handler {
	mux := http.NewServeMux()
	s.otaRoutes(mux)
	return mux
}
